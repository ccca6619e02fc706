"""Embedding reports, checked against plain-Python references and real files."""

import ast
import collections
import json
import math
import os
import re

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from run_files import metrics_rows

from jaxembed import report
from jaxembed.report import analysis
from jaxembed.report import plots as plots_lib
from jaxembed.text.tokenizer import get_encoding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DOLLARS = 13702  # '$$': unescaped, matplotlib would parse it as (empty) mathtext and fail.


@pytest.fixture(scope="module")
def enc():
    return get_encoding("gpt2")


def reference_cosine(table, i, j):
    dot = sum(a * b for a, b in zip(table[i], table[j]))
    norm_i = math.sqrt(sum(a * a for a in table[i]))
    norm_j = math.sqrt(sum(b * b for b in table[j]))
    return 0.0 if norm_i == 0 or norm_j == 0 else dot / (norm_i * norm_j)


def reference_neighbors(table, query, k, candidates):
    scored = [(j, reference_cosine(table, query, j)) for j in candidates if j != query]
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))[:k]


def read_label(label):
    """A token label back to bytes: a quoted str whose ⟨hex⟩ runs are raw bytes."""
    text = ast.literal_eval(label)
    assert isinstance(text, str)
    return b"".join(
        bytes.fromhex(piece[1:-1]) if piece.startswith("⟨") else piece.encode()
        for piece in re.split("(⟨[0-9a-f ]+⟩)", text)
    )


def assert_no_temp_files(directory):
    leftovers = [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# Frequencies.


def test_train_counts_match_counter():
    from jaxembed.data.splits import Splits

    ids = np.random.default_rng(0).integers(0, 30, size=500).astype(np.int32)
    counts = Splits(ids, ids[:1], vocab_size=40).train_counts()
    counter = collections.Counter(ids.tolist())
    assert counts.shape == (40,)
    assert counts.tolist() == [counter[i] for i in range(40)]


@pytest.mark.parametrize("n", [1, 5, 12, 100])
def test_most_frequent_matches_counter_with_tie_break(n):
    # Few distinct values over many draws: lots of equal counts.
    ids = np.random.default_rng(1).integers(0, 20, size=60)
    counter = collections.Counter(ids.tolist())
    assert len(counter.most_common()) == len(counter)
    expected = [i for i, _ in sorted(counter.most_common(), key=lambda kv: (-kv[1], kv[0]))][:n]
    assert analysis.most_frequent(np.bincount(ids), n).tolist() == expected
    assert analysis.most_frequent(np.bincount(ids, minlength=50257), n).tolist() == expected


def test_most_frequent_on_corpus(enc, corpus_path):
    ids = np.array(enc.encode(corpus_path.read_text(encoding="utf-8")[:20_000]))
    top = analysis.most_frequent(np.bincount(ids, minlength=enc.n_vocab), 10)
    counts = collections.Counter(ids.tolist())
    assert [counts[i] for i in top.tolist()] == sorted((c for c in counts.values()), reverse=True)[:10]


# Similarity and neighbours.


@pytest.fixture
def table_VxD():
    table = np.random.default_rng(2).normal(size=(20, 6))
    table[5] = 0.0  # A row an untrained or pruned table might have.
    table[7] = 2 * table[3] + 1e-4 * np.random.default_rng(3).normal(size=6)
    return table


def test_cosine_similarity_matches_python_reference(table_VxD):
    queries = [0, 3, 5, 19]
    sims = analysis.cosine_similarity(table_VxD, queries)
    expected = [[reference_cosine(table_VxD.tolist(), q, j) for j in range(20)] for q in queries]
    assert sims.shape == (4, 20)
    np.testing.assert_allclose(sims, expected, atol=1e-12)


def test_cosine_similarity_zero_row_gives_zero_not_nan(table_VxD):
    sims = analysis.cosine_similarity(table_VxD, [5, 0])
    assert not np.isnan(sims).any()
    assert (sims[0] == 0).all() and sims[1, 5] == 0


def test_cosine_similarity_keeps_float32(table_VxD):
    assert analysis.cosine_similarity(table_VxD.astype(np.float32), [0]).dtype == np.float32


def test_nearest_neighbors_match_reference(table_VxD):
    rows = table_VxD.tolist()
    got = analysis.nearest_neighbors(table_VxD, [0, 3, 11], k=4)
    for query, neighbors in zip([0, 3, 11], got):
        expected = reference_neighbors(rows, query, 4, range(20))
        assert [i for i, _ in neighbors] == [i for i, _ in expected]
        np.testing.assert_allclose([c for _, c in neighbors], [c for _, c in expected], atol=1e-12)


def test_nearest_neighbor_known_by_design_and_query_excluded(table_VxD):
    (neighbors,) = analysis.nearest_neighbors(table_VxD, [3], k=19)
    assert neighbors[0][0] == 7 and neighbors[0][1] == pytest.approx(1.0, abs=1e-6)
    assert 3 not in [i for i, _ in neighbors]
    assert len(neighbors) == 19


def test_nearest_neighbors_respect_candidates(table_VxD):
    candidates = np.array([1, 2, 3, 5, 9, 12])  # 7, the true neighbour of 3, is not eligible.
    (neighbors,) = analysis.nearest_neighbors(table_VxD, [3], k=10, candidate_ids=candidates)
    ids = [i for i, _ in neighbors]
    assert set(ids) == {1, 2, 5, 9, 12}  # All candidates but the query; k > pool is fine.
    assert ids == [i for i, _ in reference_neighbors(table_VxD.tolist(), 3, 10, candidates.tolist())]
    assert dict(neighbors)[5] == 0.0


# Tokens.


def test_resolve_tokens_single_tokens(enc):
    assert analysis.resolve_tokens(enc, [" Romeo", " thou"]) == [enc.encode(" Romeo")[0], enc.encode(" thou")[0]]
    assert len(enc.encode(" Romeo")) == 1


def test_resolve_tokens_names_ids_of_multi_token_word(enc):
    with pytest.raises(ValueError) as info:
        analysis.resolve_tokens(enc, [" Romeo", "Romeo and"])
    message = str(info.value)
    assert "'Romeo and'" in message and str(enc.encode("Romeo and")) in message


def test_resolve_tokens_hints_leading_space(enc):
    words = ["thou", "Romeo", "Juliet", "wherefore", "love"]
    word = next(w for w in words if len(enc.encode(w)) > 1 and len(enc.encode(" " + w)) == 1)
    with pytest.raises(ValueError, match="leading space") as info:
        analysis.resolve_tokens(enc, [word])
    assert repr(" " + word) in str(info.value)


def test_resolve_tokens_hints_removing_space(enc):
    assert len(enc.encode("  the")) > 1 and len(enc.encode("the")) == 1
    with pytest.raises(ValueError, match="without the leading space") as info:
        analysis.resolve_tokens(enc, ["  the"])
    assert "'the'" in str(info.value)


def test_resolve_tokens_rejects_empty_word(enc):
    with pytest.raises(ValueError, match="0 GPT-2 tokens"):
        analysis.resolve_tokens(enc, [""])


def test_format_neighbors_escapes_tokens(enc):
    newline, thou = 198, enc.encode(" thou")[0]
    text = analysis.format_neighbors(enc, [thou, newline], [[(newline, 0.5)], [(thou, -0.25)]])
    assert text.splitlines() == ["' thou' -> '\\n' 0.50", "'\\n'    -> ' thou' -0.25"]
    with pytest.raises(ValueError):  # One neighbour list per probe, or it is a caller bug.
        analysis.format_neighbors(enc, [thou, newline], [[(newline, 0.5)]])


# PCA and positions.


def pairwise_distances(points):
    return np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))


def test_pca_2d_preserves_distances_of_planar_data():
    rng = np.random.default_rng(4)
    basis_2x10 = np.linalg.qr(rng.normal(size=(10, 2)))[0].T
    data = rng.normal(size=(30, 2)) * [3.0, 1.0] @ basis_2x10 + rng.normal(size=10)
    points = analysis.pca_2d(data)
    assert points.shape == (30, 2)
    np.testing.assert_allclose(pairwise_distances(points), pairwise_distances(data), atol=1e-9)


def test_pca_2d_deterministic_and_row_order_independent():
    data = np.random.default_rng(5).normal(size=(25, 8))
    perm = np.random.default_rng(6).permutation(25)
    np.testing.assert_array_equal(analysis.pca_2d(data), analysis.pca_2d(data))
    np.testing.assert_allclose(analysis.pca_2d(data[perm]), analysis.pca_2d(data)[perm], atol=1e-10)


def test_pca_2d_sign_rule():
    data = np.random.default_rng(10).normal(size=(25, 8))
    centred = data - data.mean(axis=0)
    # Recover the two axes the points were projected on; each must have its
    # largest-magnitude loading positive.
    axes_Dx2 = np.linalg.lstsq(centred, analysis.pca_2d(data), rcond=None)[0]
    np.testing.assert_allclose(np.linalg.norm(axes_Dx2, axis=0), 1.0, atol=1e-9)
    assert (axes_Dx2[np.abs(axes_Dx2).argmax(axis=0), [0, 1]] > 0).all()
    np.testing.assert_allclose(analysis.pca_2d(-data), -analysis.pca_2d(data), atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 4), (3, 1), (5, 3)])
def test_pca_2d_degenerate_inputs_are_finite(shape):
    data = np.ones(shape) if shape[0] == 1 else np.arange(np.prod(shape), dtype=float).reshape(shape)
    points = analysis.pca_2d(data)
    assert points.shape == (shape[0], 2) and np.isfinite(points).all()


def test_position_similarity_matches_numpy_reference():
    pos_LxD = np.random.default_rng(7).normal(size=(16, 8))
    sims = analysis.position_similarity(pos_LxD)
    unit = pos_LxD / np.linalg.norm(pos_LxD, axis=1, keepdims=True)
    np.testing.assert_allclose(sims, unit @ unit.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-12)
    np.testing.assert_array_equal(sims, sims.T)


# Plots.


@pytest.fixture(scope="module")
def plots(enc, tmp_path_factory):
    """Every plot, drawn once, with the backend and pyplot state around them."""
    import matplotlib.pyplot as plt

    out = tmp_path_factory.mktemp("plots")
    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    rng = np.random.default_rng(8)
    table_VxD = rng.normal(size=(enc.n_vocab, 16)).astype(np.float32)
    probes = [enc.encode(" thou")[0], 198, DOLLARS]
    before = analysis.nearest_neighbors(table_VxD, probes, k=3, candidate_ids=np.arange(300))
    after = [[(DOLLARS, 0.9), (197, 0.5), (447, -0.1)]] * 3  # '$$', '\t' and a partial UTF-8 token.
    metrics = [
        {
            "step": s,
            "train_loss": 10 - s / 10,
            "learning_rate": 1e-3,
            "tokens_per_sec": 1e5,
            **({"val_loss": 10.5 - s / 10} if s % 20 == 0 else {}),
        }
        for s in range(0, 100, 5)
    ]
    metrics[-1]["val_loss"] = float("nan")
    paths = {
        "loss": report.plot_loss_curves(metrics, out / "loss.png", vocab_size=enc.n_vocab),
        "neighbors": report.plot_neighbors(enc, before, after, probes, out / "nn.png"),
        "pca": report.plot_pca(enc, table_VxD, [DOLLARS, *range(100)], out / "sub" / "pca.png"),
        "pca_pair": report.plot_pca(
            enc, table_VxD, [447, DOLLARS, *range(300)], out / "pca2.png", before_VxD=-table_VxD
        ),
        "positions": report.plot_position_similarity(rng.normal(size=(32, 16)), out / "pos.png"),
        "positions_pair": report.plot_position_similarity(
            rng.normal(size=(8, 4)), out / "pos2.png", before_LxD=rng.normal(size=(8, 4))
        ),
        "positions_pca": report.plot_position_pca(
            rng.normal(size=(64, 4)), out / "pos_pca.png", before_LxD=rng.normal(size=(64, 4))
        ),
    }
    return paths, (backend, figures), (matplotlib.get_backend(), plt.get_fignums())


@pytest.mark.parametrize(
    "name", ["loss", "neighbors", "pca", "pca_pair", "positions", "positions_pair", "positions_pca"]
)
def test_plot_writes_readable_png(plots, name):
    path = plots[0][name]
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] == 4 and min(pixels.shape[:2]) > 200
    assert pixels[..., :3].std() > 0.01
    assert_no_temp_files(path.parent)


def test_each_picture_is_drawn_once(enc, tmp_path, monkeypatch):
    """savefig draws a figure twice while a layout engine (even tight_layout's placeholder) is set."""
    from matplotlib.figure import Figure

    draws = []
    real_draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda fig, renderer: draws.append(fig) or real_draw(fig, renderer))
    rng = np.random.default_rng(3)
    metrics = [{"step": s, "train_loss": 10 - s / 10, "val_loss": 10.5 - s / 10} for s in range(0, 50, 10)]
    report.plot_loss_curves(metrics, tmp_path / "loss.png", vocab_size=enc.n_vocab)  # _save lays out
    report.plot_pca(enc, rng.normal(size=(enc.n_vocab, 4)), list(range(50)), tmp_path / "pca.png")  # lays out itself
    report.plot_position_similarity(rng.normal(size=(8, 4)), tmp_path / "pos.png")
    assert len(draws) == 3 and len(set(map(id, draws))) == 3


def test_plots_leave_matplotlib_state_alone(plots):
    _, before, after = plots
    assert after == before
    assert after[1] == []


# Files.


def test_export_projector_round_trips(enc, tmp_path):
    table_VxD = np.random.default_rng(9).normal(size=(enc.n_vocab, 5))
    token_ids = [198, 197, enc.encode(" thou")[0], 447, 0]
    paths = report.export_projector(enc, table_VxD, token_ids, tmp_path / "projector")
    assert sorted(p.name for p in paths.values()) == ["metadata.tsv", "vectors.tsv"]

    vectors = np.loadtxt(paths["vectors"], delimiter="\t", ndmin=2)
    assert vectors.shape == (5, 5)
    np.testing.assert_array_equal(vectors.astype(np.float32), table_VxD[token_ids].astype(np.float32))

    lines = paths["metadata"].read_text(encoding="utf-8").split("\n")
    assert lines[0] == "token\tid" and lines[-1] == "" and len(lines) == 1 + len(token_ids) + 1
    for line, token_id in zip(lines[1:], token_ids):
        label, id_text = line.split("\t")  # '\n' and '\t' tokens stay on one line, in one column.
        assert int(id_text) == token_id
        assert label == analysis.token_label(enc, token_id)  # the one spelling every output uses
        assert read_label(label) == enc.decode_single_token_bytes(token_id)
    assert_no_temp_files(tmp_path)


def test_export_projector_failure_keeps_previous_files(enc, tmp_path):
    table_VxD = np.ones((enc.n_vocab, 3))
    paths = report.export_projector(enc, table_VxD, [1, 2], tmp_path)
    before = paths["vectors"].read_bytes()
    with pytest.raises(IndexError):
        report.export_projector(enc, table_VxD, [1, enc.n_vocab + 5], tmp_path)
    assert paths["vectors"].read_bytes() == before
    assert_no_temp_files(tmp_path)


def test_written_files_follow_umask(enc, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    paths = report.export_projector(enc, np.ones((enc.n_vocab, 2)), [1], tmp_path)
    assert paths["metadata"].stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_report(tmp_path):
    sections = {"Nearest neighbours": "' thou' -> ' art' 0.61\n```not a fence```"}
    images = {"Loss curves": "loss.png", "Token PCA": "plots/pca.png", "Spaced": "my plot.png"}
    path = report.write_report(
        tmp_path / "REPORT.md",
        title="Romeo embeddings",
        summary_lines=["final loss 5.1", "100 steps"],
        images=images,
        sections=sections,
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Romeo embeddings\n")
    assert "- final loss 5.1\n- 100 steps" in text
    assert "![Loss curves](loss.png)" in text and "![Token PCA](plots/pca.png)" in text
    assert "![Spaced](<my plot.png>)" in text
    assert "## Nearest neighbours\n\n````\n' thou' -> ' art' 0.61\n```not a fence```\n````" in text
    assert_no_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["REPORT.md"]


def test_pca_labels_never_overlap_each_other_or_other_points():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = np.random.default_rng(11).normal(size=(200, 2))  # dense: not all 200 labels can fit
    ax.scatter(points[:, 0], points[:, 1], s=14)
    ax.set_xlim(-4, 4), ax.set_ylim(-4, 4)
    labelled = plots_lib._place_labels(ax, points, [f"'tok{i}'" for i in range(200)], max_labels=60)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert 5 < len(labelled) == len(boxes) < 200
    assert labelled == sorted(labelled)  # priority order: earlier (more frequent) tokens first
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    xy = ax.transData.transform(points)
    for box in boxes:
        inside = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
        assert not inside.any()


def test_uniform_guess_loss():
    assert report.uniform_guess_loss(50257) == pytest.approx(math.log(50257))
    assert report.uniform_guess_loss(1) == 0.0
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            report.uniform_guess_loss(bad)


@pytest.mark.parametrize(
    ("final", "best_step", "verdict_step", "says"),
    [
        (5.400, 300, None, "was still falling when the run ended"),
        (5.470, 200, None, "The last evaluation is 0.070 nats above it: not yet overfitting"),
        (5.470, 200, 250, "overfitting: validation loss rises while training loss falls"),
    ],
)
def test_loss_caption_says_what_the_validation_curve_does(final, best_step, verdict_step, says):
    from jaxembed.report import captions

    numbers = {
        "num_classes": 9, "uniform_guess_loss": math.log(9), "val_loss_best": 5.4, "val_loss_best_step": best_step,
        "val_loss_final": final, "overfitting_from_step": verdict_step, "position_locality": None,
    }  # fmt: skip
    caption = captions.captions(numbers, num_layers=1, length=16, pca_count=100)[captions.LOSS]
    assert says in caption
    # A curve that ends above its best is never described as showing no sign of overfitting.
    assert "no sign of overfitting" not in caption


# A real short run: report.json against numpy on the exported tables.

PROBES = (" Romeo", " thou", " the", " function")  # ' function' never occurs in Romeo and Juliet


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, corpus_path):
    """30 steps of the tiny config with model.active_vocab, its report, and `jaxembed export`."""
    from jaxembed import cli
    from jaxembed.config import named_config
    from jaxembed.train.loop import train_and_evaluate

    config = named_config("tiny")
    config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4
    config.model.active_vocab = True
    config.train.steps, config.train.log_every, config.train.eval_every = 30, 5, 10
    config.train.checkpoint_every, config.train.keep_checkpoints, config.train.eval_batches = 10, 1, 2
    config.report.probe_tokens = PROBES
    workdir = tmp_path_factory.mktemp("short") / "run"
    text = corpus_path.read_text(encoding="utf-8")[:60_000]
    result = train_and_evaluate(config, workdir, text=text, progress=False)
    path = report.write_run_report(result, config.report)
    assert cli.main(["export", "--workdir", str(workdir), "--tokens", "50"]) == 0
    return workdir, result, json.loads((path.parent / "report.json").read_text())


def test_report_json_matches_numpy_on_exported_tables(short_run):
    workdir, result, numbers = short_run
    token_VxD = np.load(workdir / "projector" / "token_embeddings.npy").astype(np.float64)
    position_LxD = np.load(workdir / "projector" / "position_embeddings.npy").astype(np.float64)
    assert token_VxD.shape == (50257, 32) and position_LxD.shape == (8, 32)
    counts_V = np.load(workdir / "token_counts.npy")
    rows = metrics_rows(workdir)

    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    best_step, best = min(val, key=lambda sv: sv[1])
    assert numbers["val_loss_initial"] == val[0][1] and numbers["val_loss_final"] == val[-1][1]
    assert (numbers["val_loss_best_step"], numbers["val_loss_best"]) == (best_step, best)
    assert numbers["val_loss_positions_shuffled"] == result.val_loss_positions_shuffled
    assert numbers["positions_shuffled_gap"] == pytest.approx(result.val_loss_positions_shuffled - val[-1][1])

    def locality(table):
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        sims = unit @ unit.T
        gap = np.abs(np.subtract.outer(np.arange(len(table)), np.arange(len(table))))
        return sims[gap == 1].mean() - sims[gap >= len(table) / 2].mean()

    assert numbers["position_locality"] == pytest.approx(locality(position_LxD), abs=1e-6)
    initial_LxD = result.tables(initial=True)[1].astype(np.float64)
    assert numbers["position_locality_initial"] == pytest.approx(locality(initial_LxD), abs=1e-6)

    candidates = np.flatnonzero(counts_V >= 3)
    assert numbers["neighbor_candidates"] == len(candidates) and numbers["neighbor_min_count"] == 3
    centred = token_VxD[candidates] - token_VxD[candidates].mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    pair_sims = (unit @ unit.T)[~np.eye(len(candidates), dtype=bool)]
    assert numbers["random_pair_cosine_centred"]["mean"] == pytest.approx(pair_sims.mean(), abs=1e-6)
    assert numbers["random_pair_cosine_centred"]["std"] == pytest.approx(pair_sims.std(), abs=1e-6)

    enc = get_encoding("gpt2")
    mean_D = token_VxD[candidates].mean(axis=0)
    for entry in numbers["neighbors"]:
        query = entry["id"]
        assert counts_V[query] >= 3  # every probe shown is a candidate
        q = token_VxD[query] - mean_D
        cos = {int(j): q @ u / np.linalg.norm(q) for j, u in zip(candidates, unit) if j != query}
        top = sorted(cos, key=lambda j: (-cos[j], j))[:5]
        assert [n["id"] for n in entry["neighbors"]] == top
        np.testing.assert_allclose([n["cosine"] for n in entry["neighbors"]], [cos[j] for j in top], atol=1e-5)
        assert [n["token"] for n in entry["neighbors"]] == [analysis.token_label(enc, j) for j in top]


def test_report_uniform_line_is_ln_k_with_active_vocab(short_run):
    workdir, result, numbers = short_run
    k = len(np.load(workdir / "active_ids.npy"))
    assert k == len(result.splits.active_ids) < 50257
    assert numbers["num_classes"] == k
    assert numbers["uniform_guess_loss"] == pytest.approx(math.log(k))
    assert numbers["val_loss_initial"] == pytest.approx(math.log(k), abs=0.1)  # an untrained model starts at ln K
    text = (workdir / "report.md").read_text()
    assert f"uniform-guess loss ln({k:,}) = {math.log(k):.3f}" in text


def test_report_drops_the_unseen_probe_and_captions_every_picture(short_run):
    workdir, _, numbers = short_run
    # ' function' never occurs: it is named once as dropped, not drawn or listed as a row.
    assert "' function'" not in [e["token"] for e in numbers["neighbors"]]
    assert {"token": "' function'", "id": 2163, "count": 0} in numbers["probes_dropped"]
    counts_V = np.load(workdir / "token_counts.npy")
    assert numbers["probe_min_count"] == 20
    assert all(counts_V[p["id"]] == p["count"] < 20 for p in numbers["probes_dropped"])
    assert all(counts_V[e["id"]] >= 20 for e in numbers["neighbors"])
    text = (workdir / "report.md").read_text()
    assert "never in the training text" not in text
    (line,) = [line for line in text.splitlines() if line.startswith("- probes not shown:")]
    assert "' function' (never seen)" in line and "fewer than 20 times" in line
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)\n\n(\S[^\n]+)", text)
    assert sorted(name for name, _ in images) == sorted(
        ["loss.png", "neighbors.png", "pca.png", "positions.png", "positions_pca.png"]
    )
    for name, caption in images:
        assert len(caption) > 150, name  # a caption paragraph, not just a heading
        assert (workdir / name).read_bytes()[:8] == PNG_SIGNATURE
    locality, initial = numbers["position_locality"], numbers["position_locality_initial"]
    assert f"Untrained: {initial:+.2f}; trained: {locality:+.2f}." in text


def test_neighbors_command_agrees_with_the_report(short_run, capsys):
    from jaxembed import cli

    workdir, _, numbers = short_run
    enc = get_encoding("gpt2")
    probes = [enc.decode([entry["id"]]) for entry in numbers["neighbors"]]  # the configured ones + any filled in
    counts_V = np.load(workdir / "token_counts.npy")
    kept = [p for p in PROBES if counts_V[enc.encode(p)[0]] >= 20]  # ' function' (never in the text) is not
    assert " function" not in kept and probes[: len(kept)] == kept
    code = cli.main(["neighbors", "--workdir", str(workdir), "-k", "5", *probes])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Step 30 of ") and f"{numbers['neighbor_candidates']:,} tokens seen >= 3" in lines[0]
    for entry, line in zip(numbers["neighbors"], lines[1:], strict=True):
        label, rest = (part.strip() for part in line.split(" -> ", 1))
        assert label == entry["token"]
        assert rest == ", ".join(f"{n['token']} {n['cosine']:.2f} ({n['sigma']:.1f}σ)" for n in entry["neighbors"])
    assert "Traceback" not in err


def test_best_checkpoint_is_kept_and_readable(short_run, capsys):
    from jaxembed import cli
    from jaxembed.train import run as run_lib

    workdir, _, numbers = short_run
    # keep_checkpoints=1: the latest step, plus the best one if that is older.
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == sorted({30, numbers["val_loss_best_step"]})
    assert run_lib.load_run(workdir, step="best").step == numbers["val_loss_best_step"]
    code = cli.main(["export", "--workdir", str(workdir), "--step", "best", "--out", str(workdir / "best")])
    assert code == 0 and f"Step {numbers['val_loss_best_step']} of" in capsys.readouterr().out
    code = cli.main(["neighbors", "--workdir", str(workdir), "--step", "20000", " the"])
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint for step 20000" in err and "available steps: " in err


def test_checkpointer_keeps_the_latest_and_the_best(tmp_path):
    import jax.numpy as jnp

    from jaxembed.train.checkpoint import Checkpointer

    losses = {1: 5.0, 2: 3.0, 3: 4.0, 4: 4.5, 5: 3.2, 6: 2.9, 7: 3.5, 8: 3.4}
    ckpt = Checkpointer(tmp_path, keep=2)
    for step, loss in losses.items():
        ckpt.save(step, {"w": jnp.full(3, step, jnp.float32)}, metrics={"val_loss": loss})
        ckpt.wait()
        seen = {s: v for s, v in losses.items() if s <= step}
        best = min(seen, key=seen.get)
        assert ckpt.steps() == sorted({*sorted(seen)[-2:], best})  # the 2 latest and the best so far
        assert ckpt.best_step() == best
    state, step = ckpt.restore({"w": jnp.zeros(3)}, step=6, read_only=True)
    assert step == 6 and state["w"].tolist() == [6.0] * 3
    ckpt.close()
    assert Checkpointer(tmp_path, keep=2).best_step() == 6  # read back from disk


def test_a_run_without_saved_validation_losses_has_no_best(short_run, tmp_path, capsys):
    import shutil

    from jaxembed import cli

    workdir = tmp_path / "old"
    shutil.copytree(short_run[0], workdir)
    for metrics_dir in (workdir / "checkpoints").glob("*/metrics"):
        shutil.rmtree(metrics_dir)  # as a run saved before checkpoints carried val_loss
    code = cli.main(["neighbors", "--workdir", str(workdir), "--step", "best", " the"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert f"there is no best one; available steps: {', '.join(map(str, steps))}." in err
    assert cli.main(["neighbors", "--workdir", str(workdir), " the"]) == 0  # latest still reads


def test_neighbors_picture_is_bounded_and_says_so(tmp_path):
    enc = get_encoding("gpt2")
    rows = [[(i + 1, 0.5), (i + 2, 0.4)] for i in range(600)]
    few = plots_lib.plot_neighbors(enc, rows[:12], rows[:12], list(range(12)), tmp_path / "few.png", subtitle="s")
    many = plots_lib.plot_neighbors(enc, rows, rows, list(range(600)), tmp_path / "many.png", subtitle="s")
    h_few, h_many = (matplotlib.image.imread(p).shape[0] for p in (few, many))
    assert plots_lib.MAX_NEIGHBOR_ROWS == 12 and h_many <= 1.1 * h_few  # not 50 times taller
    assert len(many.read_bytes()) < 2_000_000


def test_cjk_and_emoji_tokens_are_drawn_legibly_without_warnings(tmp_path):
    import warnings

    enc = get_encoding("gpt2")
    text = "的是不了人我在有他这为之大来以个中上们 東京へ行きます 한국어 😀🎉"
    ids = sorted(set(enc.encode(text)))
    whole = [i for i in ids if "⟨" not in analysis.token_label(enc, i)]  # tokens that are whole characters
    assert any(ord(ch) > 0x2E80 for i in whole for ch in analysis.token_label(enc, i))
    rows = [[(ids[(n + 1) % len(ids)], 0.5)] for n in range(len(ids))]
    table_VxD = np.random.default_rng(0).normal(size=(enc.n_vocab, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would fail here
        plots_lib.plot_neighbors(enc, rows, rows, ids, tmp_path / "nn.png")
        plots_lib.plot_pca(enc, table_VxD, np.array(ids), tmp_path / "pca.png", before_VxD=table_VxD)
    fonts = plots_lib._fonts(plots_lib.font_families(monospace=True))
    for i in whole:
        label = plots_lib._plot_label(enc, i, monospace=True)
        for ch in label.replace("\\\\", ""):
            assert any(f.get_char_index(ord(ch)) for f in fonts) or ch in "uU0123456789abcdef", (label, ch)


# Probes chosen for the corpus, and each neighbour in σ of the random-pair cosine.


def test_report_shows_only_probes_the_corpus_uses_and_sigmas_match_numpy(enc, tmp_path):
    rng = np.random.default_rng(12)
    table_VxD = (0.5 + rng.normal(size=(enc.n_vocab, 8))).astype(np.float32)  # a shared direction, as trained
    counts_V = np.zeros(enc.n_vocab, np.int64)
    counts_V[rng.choice(np.arange(20_000, 30_000), size=300, replace=False)] = rng.integers(3, 11, size=300)
    words = {" the": 200, " with": 100, " from": 90, " which": 80, " file": 40, " string": 35, " value": 30}
    words |= {" module": 25, " object": 20, " thou": 2, " Romeo": 0}
    for word, n in words.items():
        counts_V[enc.encode(word)] = n
    path = report.training_report(
        tmp_path,
        enc=enc,
        metrics=[{"step": 0, "val_loss": 10.8}, {"step": 10, "train_loss": 9.0, "val_loss": 9.5}],
        before_VxD=rng.normal(size=table_VxD.shape).astype(np.float32),
        after_VxD=table_VxD,
        pos_LxD=rng.normal(size=(4, 8)),
        token_counts_V=counts_V,
        probe_tokens=[" Romeo", " thou", " the"],
    )
    numbers = json.loads((tmp_path / "report.json").read_text())
    # ' Romeo' (never seen) and ' thou' (seen twice, under min_count 3) are dropped; ' the' stays; then the most frequent
    # whole words, skipping the function words ' with', ' from', ' which'.
    shown = [e["token"] for e in numbers["neighbors"]]
    assert shown == ["' the'", "' file'", "' string'", "' value'", "' module'", "' object'"]
    assert [(p["token"], p["count"]) for p in numbers["probes_dropped"]] == [("' Romeo'", 0), ("' thou'", 2)]
    text = path.read_text()
    assert "never in the training text" not in text and "' Romeo' ->" not in text and "' thou' ->" not in text
    (dropped_line,) = [line for line in text.splitlines() if line.startswith("- probes not shown:")]
    assert "' Romeo' (never seen), ' thou' (seen 2 times)" in dropped_line

    # An independent numpy computation: centred cosines over all ordered pairs of candidates.
    candidates = np.flatnonzero(counts_V >= 3)
    x = table_VxD[candidates].astype(np.float64)
    x -= x.mean(axis=0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    pairs = sims[~np.eye(len(candidates), dtype=bool)]
    mean, std = pairs.mean(), pairs.std()
    position = {int(c): n for n, c in enumerate(candidates)}
    after_section = text.split("## Nearest neighbours after training")[1].split("## ")[0]
    for entry in numbers["neighbors"]:
        row = sims[position[entry["id"]]]
        others = [(int(c), row[n]) for n, c in enumerate(candidates) if c != entry["id"]]
        top = sorted(others, key=lambda jc: (-jc[1], jc[0]))[:5]
        assert [n["id"] for n in entry["neighbors"]] == [j for j, _ in top]
        expected = [(cos - mean) / std for _, cos in top]
        np.testing.assert_allclose([n["sigma"] for n in entry["neighbors"]], expected, atol=1e-4)
        printed = ", ".join(f"{n['token']} {n['cosine']:.2f} ({n['sigma']:.1f}σ)" for n in entry["neighbors"])
        assert re.search(f"^{re.escape(entry['token'])} +-> {re.escape(printed)}$", after_section, re.M)
    assert "σ" in text.split("\n\n")[1]  # the intro says what σ means


def test_report_of_a_token_folder_run_names_its_held_out_split(tmp_path, corpus_path):
    from jaxembed.config import named_config
    from jaxembed.text import token_files
    from jaxembed.train.loop import train_and_evaluate

    text = corpus_path.read_text(encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(text[20_000:26_000], encoding="utf-8")
    (docs / "b.txt").write_text(text[40_000:52_000], encoding="utf-8")  # the larger, last one in path order
    token_files.tokenize_files([docs], tmp_path / "tok")
    config = named_config("tiny")
    config.data.tokens = str(tmp_path / "tok")
    config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4
    config.model.active_vocab = True
    config.train.steps, config.train.log_every, config.train.eval_every = 4, 2, 2
    config.train.checkpoint_every, config.train.eval_batches, config.train.tensorboard = 4, 1, False
    result = train_and_evaluate(config, tmp_path / "run", progress=False)
    path = report.write_run_report(result, config.report)

    # Plain reads of the token files: the last 10% of tokens.npy lies inside b.txt's [start, stop].
    num_tokens = len(np.load(tmp_path / "tok" / "tokens.npy", mmap_mode="r"))
    num_val = round(num_tokens * 0.1)
    documents = json.loads((tmp_path / "tok" / "meta.json").read_text())["documents"]
    assert documents[-1]["path"].endswith("b.txt") and documents[-1]["start"] < num_tokens - num_val
    expected = (
        f"the last 10% of the tokens of the token directory {tmp_path / 'tok'} ({num_val:,} tokens), "
        f"i.e. the end of its last file in path order: {documents[-1]['path']}"
    )
    # Each evaluation scores train.eval_batches (1) batches of 4 x 8 tokens, however long the split is.
    scored = 1 * 4 * 8
    assert num_val > scored
    assert (
        f"- validation: {scored} tokens each evaluation (train.eval_batches batches of data.batch_size x "
        f"data.max_length, fewer if the held-out split is shorter) from the held-out split, {expected}\n"
    ) in path.read_text()
    assert f"held-out validation text (the same {scored} tokens at each evaluation)" in path.read_text()
    numbers = json.loads((path.parent / "report.json").read_text())
    assert numbers["validation_source"] == expected and numbers["val_tokens_evaluated"] == scored


@pytest.mark.parametrize("after", ["     \n        \n   x", " O Romeo, Romeo, wherefore"])
def test_a_sample_of_mostly_spaces_is_explained_by_the_corpus(enc, tmp_path, after):
    # The python-docs main job's trained model writes indentation: the report says why, from the counts.
    rng = np.random.default_rng(5)
    counts_V = np.zeros(enc.n_vocab, np.int64)
    counts_V[[220, 198, 262, 14210]] = [30, 10, 45, 15]  # ' ', '\n', ' the', ' thou': 40 of 100 blank
    table_VxD = rng.normal(size=(enc.n_vocab, 8)).astype(np.float32)
    prompt = ":\n  "
    samples = {"prompt": prompt, "before": prompt + " salad", "after": prompt + after, "settings": "s"}
    path = report.training_report(
        tmp_path,
        enc=enc,
        metrics=[{"step": 0, "val_loss": 10.8}, {"step": 10, "train_loss": 9.0, "val_loss": 9.5}],
        before_VxD=table_VxD,
        after_VxD=table_VxD,
        pos_LxD=rng.normal(size=(4, 8)),
        token_counts_V=counts_V,
        probe_tokens=[" the"],
        samples=samples,
    )
    text = path.read_text()
    blank = sum(ch in " \n" for ch in after) / len(after)
    if blank > 0.5:
        assert f"(after training, {round(100 * blank)}% of the text is spaces and line breaks, as 40% of" in text
    else:
        assert "spaces and line breaks" not in text
