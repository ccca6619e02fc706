"""``jaxembed reference``: a short run's tables next to a synthetic GPT-2 served on 127.0.0.1 (no mocks).

The stand-in ``model.safetensors`` has GPT-2's real shapes (float16, 77 MB, so the CLI's
default shape checks hold) and known structure: its position table is a helix (cosine, sine and a
linear climb over position, rotated into 768 dimensions at random, plus a little noise) and its
token table has planted neighbours (`` Juliet`` is `` Romeo`` plus a small step, `` thee`` is
`` thou``, all on a shared offset that centring must remove). Every number is checked against
numpy written here, not against jaxembed's own analysis.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.numpy
from safetensors_server import Server

from jaxembed import cli, report
from jaxembed.config import named_config
from jaxembed.nn.pretrained import gpt2_cache_paths
from jaxembed.report.reference import REFERENCE_FILES
from jaxembed.text.tokenizer import get_encoding
from jaxembed.train.loop import train_and_evaluate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PERIOD = 256  # positions per turn of the planted helix: 4 turns over 1,024 positions
PLANTED = {" Romeo": " Juliet", " thou": " thee"}
ENC = get_encoding("gpt2")


def token_id(word: str) -> int:
    (i,) = ENC.encode(word)
    return i


def helix_Px3(positions: int = 1024) -> np.ndarray:
    p_P = np.arange(positions)
    angle_P = 2 * np.pi * p_P / PERIOD
    # Different spreads (4, 3, and 6 / sqrt(12) for the climb), so the principal axes are well defined.
    return np.stack([4 * np.cos(angle_P), 3 * np.sin(angle_P), 6 * p_P / positions], axis=1)


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``(model.safetensors bytes, wte_VxD, wpe_PxD)``, the tables as float32 after the float16 round trip."""
    rng = np.random.default_rng(0)
    rotation_DxD, _ = np.linalg.qr(rng.normal(size=(768, 768)))
    wpe_PxD = np.zeros((1024, 768))
    wpe_PxD[:, :3] = helix_Px3()
    wpe_PxD[:, 3:] = 0.02 * rng.normal(size=(1024, 765))
    wpe_PxD = (wpe_PxD @ rotation_DxD).astype(np.float16)
    wte_VxD = rng.normal(size=(50257, 768)).astype(np.float32) + 3.0  # a shared offset, as trained tables have
    for probe, planted in PLANTED.items():
        wte_VxD[token_id(planted)] = wte_VxD[token_id(probe)] + 0.05 * rng.normal(size=768)
    wte_VxD = wte_VxD.astype(np.float16)
    path = tmp_path_factory.mktemp("gpt2") / "model.safetensors"
    extra = np.zeros((4, 768), np.float16)  # another tensor, never downloaded
    safetensors.numpy.save_file({"wte.weight": wte_VxD, "wpe.weight": wpe_PxD, "ln_f.bias": extra}, path)
    return path.read_bytes(), wte_VxD.astype(np.float32), wpe_PxD.astype(np.float32)


@pytest.fixture(scope="module")
def server(gpt2_file):
    served = Server(gpt2_file[0])
    yield served
    served.close()


def short_config(position: str = "learned", steps: int = 20):
    config = named_config("tiny")
    config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4
    config.model.active_vocab = True  # the fewest rows to update: the quickest run (exports expand them)
    config.model.position = position
    config.train.steps, config.train.log_every, config.train.eval_every = steps, 5, 10
    config.train.checkpoint_every, config.train.keep_checkpoints, config.train.eval_batches = 10, 2, 2
    config.report.probe_tokens = (" Romeo", " thou", " love")
    return config


@pytest.fixture(scope="module")
def text(corpus_path) -> str:
    return corpus_path.read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text) -> pathlib.Path:
    """A finished 20-step learned-position run with its report (never changed: tests copy it)."""
    config = short_config()
    workdir = tmp_path_factory.mktemp("run") / "run"
    result = train_and_evaluate(config, workdir, text=text, progress=False)
    report.write_run_report(result, config.report)
    return workdir


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
    """The GPT-2 cache every test in the module shares: one download for all of them."""
    return tmp_path_factory.mktemp("gpt2-cache")


@pytest.fixture(scope="module")
def referenced(run_dir, server, cache, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """A copy of the run with ``jaxembed reference --step latest`` done: ``(workdir, reference.json)``."""
    workdir = tmp_path_factory.mktemp("referenced") / "run"
    shutil.copytree(run_dir, workdir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXEMBED_CACHE", str(cache))
        code = cli.main(["reference", "--workdir", str(workdir), "--url", server.url, "--step", "latest"])
    assert code == 0
    return workdir, json.loads((workdir / "reference.json").read_text())


def centred_unit_rows(table_VxD: np.ndarray, candidates_C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x_CxD = table_VxD[candidates_C].astype(np.float64)
    mean_D = x_CxD.mean(axis=0)
    x_CxD = x_CxD - mean_D
    return x_CxD / np.linalg.norm(x_CxD, axis=1, keepdims=True), mean_D


def numpy_neighbors(table_VxD, candidates_C, probe, k):
    unit_CxD, mean_D = centred_unit_rows(table_VxD, candidates_C)
    q_D = table_VxD[probe].astype(np.float64) - mean_D
    cos = {int(j): float(u @ q_D / np.linalg.norm(q_D)) for j, u in zip(candidates_C, unit_CxD) if j != probe}
    top = sorted(cos, key=lambda j: (-cos[j], j))[:k]
    return top, [cos[j] for j in top]


def numpy_pair_baseline(table_VxD, candidates_C):
    unit_CxD, _ = centred_unit_rows(table_VxD, candidates_C)
    sims = (unit_CxD @ unit_CxD.T)[~np.eye(len(candidates_C), dtype=bool)]
    return sims.mean(), sims.std()


def numpy_locality(table_LxD):
    unit = table_LxD / np.linalg.norm(table_LxD, axis=1, keepdims=True)
    sims = unit @ unit.T
    gap = np.abs(np.subtract.outer(np.arange(len(table_LxD)), np.arange(len(table_LxD))))
    return sims[gap == 1].mean() - sims[gap >= len(table_LxD) / 2].mean()


def test_pca_path_recovers_the_planted_helix(referenced, gpt2_file):
    _, numbers = referenced
    wpe_PxD = gpt2_file[2].astype(np.float64)
    points_Px3 = np.asarray(numbers["gpt2"]["position_pca"])
    # Against numpy's SVD: the same three axes, up to each axis's sign.
    centred_PxD = wpe_PxD - wpe_PxD.mean(axis=0)
    # In float32: a float64 SVD of 1,024 x 768 takes seconds on 2 cores, and float32 is ample here.
    _, s_R, vt_RxD = np.linalg.svd(centred_PxD.astype(np.float32), full_matrices=False)
    s_R, vt_RxD = s_R.astype(np.float64), vt_RxD.astype(np.float64)
    expected_Px3 = centred_PxD @ vt_RxD[:3].T
    for axis in range(3):
        sign = np.sign(points_Px3[:, axis] @ expected_Px3[:, axis])
        np.testing.assert_allclose(points_Px3[:, axis], sign * expected_Px3[:, axis], atol=1e-3 * s_R[0])
    np.testing.assert_allclose(numbers["gpt2"]["position_pca_explained"], s_R[:3] ** 2 / (s_R**2).sum(), atol=1e-5)
    # And the helix itself: the planted cos/sin/climb are a linear map of the three components (R^2 ~ 1).
    planted_Px3 = helix_Px3() - helix_Px3().mean(axis=0)
    fit, residual, *_ = np.linalg.lstsq(points_Px3, planted_Px3, rcond=None)
    assert (1 - residual / (planted_Px3**2).sum(axis=0)).min() > 0.999
    assert sum(numbers["gpt2"]["position_pca_explained"]) > 0.95  # the noise is a small remainder


def test_gpt2_neighbours_find_the_planted_ones_and_match_numpy(referenced, gpt2_file):
    workdir, numbers = referenced
    wte_VxD = gpt2_file[1]
    counts_V = np.load(workdir / "token_counts.npy")
    min_count = json.loads((workdir / "report.json").read_text())["neighbor_min_count"]
    candidates_C = np.flatnonzero(counts_V >= min_count)
    assert numbers["neighbor_candidates"] == len(candidates_C) and numbers["neighbor_min_count"] == min_count
    by_token = {entry["token"]: entry for entry in numbers["neighbors"]}
    for probe, planted in PLANTED.items():
        assert by_token[repr(probe)]["gpt2"][0]["token"] == repr(planted)
    mean, std = numpy_pair_baseline(wte_VxD, candidates_C)
    baseline = numbers["gpt2"]["random_pair_cosine_centred"]
    assert baseline["mean"] == pytest.approx(mean, abs=1e-6) and baseline["std"] == pytest.approx(std, abs=1e-6)
    for entry in numbers["neighbors"]:
        top, cosines = numpy_neighbors(wte_VxD, candidates_C, entry["id"], k=len(entry["gpt2"]))
        assert [n["id"] for n in entry["gpt2"]] == top
        np.testing.assert_allclose([n["cosine"] for n in entry["gpt2"]], cosines, atol=1e-5)
        np.testing.assert_allclose([n["sigma"] for n in entry["gpt2"]], (np.array(cosines) - mean) / std, atol=1e-4)
        ours = {n["id"] for n in entry["run"]}
        assert entry["shared"] == [n["token"] for n in entry["run"] if n["id"] in {m["id"] for m in entry["gpt2"]}]
        assert set(entry["shared"]) <= {n["token"] for n in entry["run"] if n["id"] in ours}
    assert numbers["shared_neighbors"] == sum(len(e["shared"]) for e in numbers["neighbors"])


def test_run_side_equals_the_run_report_and_export(referenced, capsys):
    workdir, numbers = referenced
    run_numbers = json.loads((workdir / "report.json").read_text())
    # The same probes as the report, with the same neighbours (the report is of the last step: --step latest).
    assert [e["id"] for e in numbers["neighbors"]] == [e["id"] for e in run_numbers["neighbors"]]
    for ours, theirs in zip(numbers["neighbors"], run_numbers["neighbors"], strict=True):
        assert [(n["id"], n["cosine"], n["sigma"]) for n in ours["run"]] == [
            (n["id"], n["cosine"], n["sigma"]) for n in theirs["neighbors"]
        ]
    assert numbers["run"]["random_pair_cosine_centred"]["mean"] == run_numbers["random_pair_cosine_centred"]["mean"]
    assert numbers["run"]["random_pair_cosine_centred"]["std"] == run_numbers["random_pair_cosine_centred"]["std"]
    assert numbers["run"]["position_locality"] == pytest.approx(run_numbers["position_locality"], abs=1e-9)
    # The tables `jaxembed export` writes, checked with numpy.
    out = workdir.parent / "export"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out), "--step", "latest"]) == 0
    capsys.readouterr()
    token_VxD = np.load(out / "token_embeddings.npy")
    position_LxD = np.load(out / "position_embeddings.npy").astype(np.float64)
    assert numbers["run"]["position_locality"] == pytest.approx(numpy_locality(position_LxD), abs=1e-6)
    candidates_C = np.flatnonzero(np.load(workdir / "token_counts.npy") >= numbers["neighbor_min_count"])
    for entry in numbers["neighbors"]:
        top, cosines = numpy_neighbors(token_VxD, candidates_C, entry["id"], k=len(entry["run"]))
        assert [n["id"] for n in entry["run"]] == top
        np.testing.assert_allclose([n["cosine"] for n in entry["run"]], cosines, atol=1e-5)


def test_position_numbers_match_numpy(referenced, gpt2_file):
    workdir, numbers = referenced
    wpe_PxD = gpt2_file[2].astype(np.float64)
    length = numbers["run"]["context_length"]
    assert length == 8 and numbers["gpt2"]["positions"] == 1024 and numbers["gpt2"]["features"] == 768
    assert numbers["gpt2"]["position_locality"] == pytest.approx(numpy_locality(wpe_PxD[:length]), abs=1e-6)
    assert numbers["gpt2"]["position_locality_all"] == pytest.approx(numpy_locality(wpe_PxD), abs=1e-6)
    # A helix of 256 positions per turn: positions 8 apart are still alike, so little locality in 8...
    assert numbers["gpt2"]["position_locality"] < 0.1
    # ...and over all 1,024 positions, far ones point elsewhere on the helix.
    assert numbers["gpt2"]["position_locality_all"] > 0.5


def test_page_pictures_captions_and_link_from_the_report(referenced, cache):
    workdir, numbers = referenced
    for name in REFERENCE_FILES:
        assert (workdir / name).is_file(), name
    for name in REFERENCE_FILES[2:]:
        assert (workdir / name).read_bytes()[:8] == PNG_SIGNATURE
    page = (workdir / "reference.md").read_text()
    for name in REFERENCE_FILES[2:]:
        assert f"]({name})" in page
    assert "helix" in page and "smooth band" in page and "in both" in page
    assert str(gpt2_cache_paths(cache=cache)["wte"]) in page
    text = (workdir / "report.md").read_text()
    assert text.count("(reference.md)") == 1
    # The link is one more bullet of the summary; nothing else of the report changed.
    lines = text.splitlines()
    (link,) = [i for i, line in enumerate(lines) if "(reference.md)" in line]
    assert lines[link].startswith("- compared with GPT-2") and lines[link - 1].startswith("- ")
    assert not any(p.name.endswith(".tmp") for p in workdir.iterdir())


def test_second_call_downloads_nothing_and_relinks_once(referenced, server, cache, monkeypatch, capsys):
    workdir, numbers = referenced
    before = len(server.ranges)
    report_before = (workdir / "report.md").read_text()
    monkeypatch.setenv("JAXEMBED_CACHE", str(cache))
    code = cli.main(["reference", "--workdir", str(workdir), "--url", server.url, "--step", "latest"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(server.ranges) == before  # read from the cache: no request at all
    assert (workdir / "report.md").read_text() == report_before  # the link is not added twice
    assert json.loads((workdir / "reference.json").read_text()) == numbers
    lines = out.splitlines()
    assert lines[-1] == f"Page: {workdir / 'reference.md'}"
    run, gpt2 = numbers["run"], numbers["gpt2"]
    assert (
        f"position locality over 8 positions: this run {run['position_locality']:+.2f}, GPT-2 "
        f"{gpt2['position_locality']:+.2f}" in out
    )
    assert f"{numbers['shared_neighbors']} of {numbers['listed_neighbors']} neighbours shared" in out


def test_first_download_fetches_only_the_two_tables(gpt2_file, server, referenced):
    # The module's first call downloaded: header length, header, wte, wpe (never the extra tensor).
    body = gpt2_file[0]
    (n,) = np.frombuffer(body[:8], "<u8")
    header = json.loads(body[8 : 8 + int(n)])
    spans = {k: (8 + int(n) + v["data_offsets"][0], 8 + int(n) + v["data_offsets"][1]) for k, v in header.items()}
    asked = [tuple(int(x) for x in r.split("=")[1].split("-")) for r in server.ranges[:4]]
    assert [(a, b + 1) for a, b in asked] == [(0, 8), (8, 8 + int(n)), spans["wte.weight"], spans["wpe.weight"]]


def test_offline_is_one_line_exit_2_and_writes_nothing(run_dir, gpt2_file, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    stopped = Server(gpt2_file[0])
    url = stopped.url
    stopped.close()  # nothing listens there now: connections are refused
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("JAXEMBED_CACHE", str(cache))
    code = cli.main(["reference", "--workdir", str(workdir), "--url", url])
    out, err = capsys.readouterr()
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("jaxembed reference: error: ") and url in line
    for path in gpt2_cache_paths(cache=cache).values():
        assert str(path) in line
    assert "Traceback" not in err and out == ""
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before  # no file, no temp file
    assert not any((workdir / name).exists() for name in REFERENCE_FILES)


def test_a_run_without_a_position_table_or_report_shows_gpt2_alone(referenced, text, server, cache, tmp_path):
    # `referenced` first: the tables are cached, so this call must not download.
    config = short_config("rope", steps=2)
    config.train.eval_every, config.train.checkpoint_every = 2, 2
    train_and_evaluate(config, tmp_path / "rope", text=text, progress=False)  # no report.json: probes are chosen
    before = len(server.ranges)
    page = report.write_reference(tmp_path / "rope", url=server.url, cache=cache)
    assert len(server.ranges) == before
    numbers = json.loads((tmp_path / "rope" / "reference.json").read_text())
    assert numbers["run"]["position"] == "rope" and numbers["run"]["position_locality"] is None
    counts_V = np.load(tmp_path / "rope" / "token_counts.npy")
    probes, _ = report.analysis.choose_probes(ENC, counts_V, [token_id(w) for w in config.report.probe_tokens])
    assert [e["id"] for e in numbers["neighbors"]] == probes  # as the run's report would have chosen them
    assert math.isfinite(numbers["gpt2"]["position_locality"])
    text_md = page.read_text()
    assert "This run has no position table to compare (model.position = rope" in text_md
    assert (tmp_path / "rope" / "reference_positions.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (tmp_path / "rope" / "report.md").exists()  # no report to link from: none is made up


def test_a_non_run_folder_is_one_line_before_any_download(tmp_path, server, capsys):
    before = len(server.ranges)
    code = cli.main(["reference", "--workdir", str(tmp_path), "--url", server.url])
    _, err = capsys.readouterr()
    assert code == 2 and "is not a jaxembed run" in err and len(err.strip().splitlines()) == 1
    assert len(server.ranges) == before


def test_a_rewritten_run_report_keeps_its_link_to_the_page(tmp_path):
    # A rerun of `jaxembed train` rewrites report.md from scratch: the link must survive it.
    (tmp_path / "reference.md").write_text("# This run next to GPT-2's own tables\n")
    rng = np.random.default_rng(0)
    counts_V = np.zeros(ENC.n_vocab, int)
    counts_V[:500] = 10
    path = report.training_report(
        tmp_path,
        enc=ENC,
        metrics=[{"step": 0, "val_loss": 10.8}],
        before_VxD=rng.normal(size=(ENC.n_vocab, 4)),
        after_VxD=rng.normal(size=(ENC.n_vocab, 4)),
        pos_LxD=rng.normal(size=(4, 4)),
        token_counts_V=counts_V,
        probe_tokens=[" the"],
        projector_tokens=10,
    )
    bullets = [line for line in path.read_text().splitlines() if line.startswith("- ")]
    assert bullets[-1].startswith("- compared with GPT-2: [reference.md](reference.md)")
