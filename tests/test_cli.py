"""The ``jaxembed`` command end to end: train, resume after SIGKILL, damaged checkpoints,
divergence, neighbors, export, sample, walkthrough, and its error messages.

One finished run (module scope, a real subprocess) serves most tests; tests that
change a workdir copy it first. Training runs use a small slice of Romeo and
Juliet and shrunken batches so that each finishes in seconds.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from run_files import HANG_GUARD, corrupt, jaxembed, logged_steps, metrics_rows, snapshot

from jaxembed import cli, data, nn
from jaxembed.config import CONFIG_DIR
from jaxembed.report import analysis
from jaxembed.text import corpus
from jaxembed.text.tokenizer import get_encoding
from jaxembed.train import run as run_lib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 40

# ml_collections' config_flags loads config files with the deprecated load_module().


# --- Helpers ---------------------------------------------------------------


def train_args(workdir, text_path, *extra):
    return [
        "train",
        "--config",
        str(CONFIG_DIR / "tiny.py"),
        "--workdir",
        str(workdir),
        "--text",
        str(text_path),
        "--no-progress",
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=10",
        "--config.train.log_every=5",
        "--config.train.eval_every=10",
        "--config.train.eval_batches=2",
        "--config.train.keep_checkpoints=2",
        "--config.data.batch_size=4",
        "--config.data.max_length=8",
        "--config.data.stride=8",
        *extra,
    ]


def main_in_process(args, capsys):
    """Runs the CLI in this process (no interpreter start-up): ``(exit code, stdout, stderr)``."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def checkpoint_names(workdir):
    return sorted((p.name for p in (workdir / "checkpoints").iterdir()), key=lambda n: (len(n), n))


def reference_lr(step, peak=2e-2, warmup=20, total=STEPS, final=0.1):
    if step < warmup:
        return peak * step / warmup
    return peak * final + (peak - peak * final) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text_path, env):
    """One uninterrupted run: ``(workdir, completed process)``."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    proc = jaxembed(train_args(workdir, text_path), env)
    assert proc.returncode == 0, proc.stderr
    return workdir, proc


@pytest.fixture
def finished_copy(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


# --- train: metrics, report, retention ------------------------------------


def test_train_writes_metrics_rows(finished):
    workdir, _ = finished
    rows = metrics_rows(workdir)
    assert [r["step"] for r in rows] == list(range(0, STEPS + 1, 5))
    assert set(rows[0]) == {"step", "learning_rate", "val_loss"}
    for row in rows[1:]:
        keys = {"step", "train_loss", "grad_norm", "learning_rate", "tokens_per_sec"}
        assert set(row) == keys | ({"val_loss"} if row["step"] % 10 == 0 else set())
        assert math.isfinite(row["train_loss"]) and row["tokens_per_sec"] > 0
        # Mean gradient norm before clipping: finite and positive while the loss still falls.
        assert math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
        # The rate the row's last step used (the schedule counts from 0).
        assert row["learning_rate"] == pytest.approx(reference_lr(row["step"] - 1), rel=1e-5)
    assert rows[0]["learning_rate"] == 0.0
    assert abs(rows[0]["val_loss"] - math.log(50257)) < 0.05
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0


def test_no_progress_logs_one_line_per_evaluation(finished):
    # Without a bar (--no-progress: logs, batch jobs) a run is not silent until the end.
    workdir, proc = finished
    logged = re.findall(r"^step (\d+)/(\d+): train loss (\S+), validation loss (\S+), ", proc.stdout, re.MULTILINE)
    evaluated = [r for r in metrics_rows(workdir) if "val_loss" in r and "train_loss" in r]
    assert len(logged) == len(evaluated) >= 2
    for (step, total, train, val), row in zip(logged, evaluated, strict=True):
        assert (int(step), int(total)) == (row["step"], STEPS)
        assert (float(train), float(val)) == (round(row["train_loss"], 3), round(row["val_loss"], 3))


def test_train_writes_report_plots_and_projector(finished):
    workdir, proc = finished
    assert f"Report: {workdir / 'report.md'}" in proc.stdout
    first, last = re.search(r"Validation loss (\d+\.\d+) -> (\d+\.\d+)", proc.stdout).groups()
    rows = metrics_rows(workdir)
    assert (float(first), float(last)) == (round(rows[0]["val_loss"], 3), round(rows[-1]["val_loss"], 3))

    text = (workdir / "report.md").read_text()
    for name in ("loss.png", "neighbors.png", "pca.png", "positions.png"):
        assert (workdir / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"({name})" in text
    assert f"steps: {STEPS}" in text

    run = run_lib.load_run(workdir)
    embeddings = np.load(workdir / "projector" / "token_embeddings.npy")
    np.testing.assert_array_equal(embeddings, run.token_VxD)  # the trained table, not the initial one
    np.testing.assert_array_equal(np.load(workdir / "projector" / "position_embeddings.npy"), run.position_LxD)
    assert not (workdir / "projector" / "embeddings.npy").exists()  # the token table is written once
    vectors = np.loadtxt(workdir / "projector" / "vectors.tsv", delimiter="\t", ndmin=2)
    metadata = (workdir / "projector" / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "token\tid" and len(metadata) == len(vectors) + 1 > 100
    ids = [int(line.rsplit("\t", 1)[1]) for line in metadata[1:]]
    np.testing.assert_allclose(vectors, run.token_VxD[ids], rtol=1e-6)


def test_keep_checkpoints_keeps_the_last_k(finished):
    workdir, _ = finished
    assert checkpoint_names(workdir) == ["30", "40"]


# --- Resume after SIGKILL --------------------------------------------------


def test_resume_after_sigkill_matches_an_uninterrupted_run_bitwise(finished, text_path, env, tmp_path):
    workdir = tmp_path / "killed"
    args = [sys.executable, "-m", "jaxembed.cli", *train_args(workdir, text_path)]
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(args, env=env, cwd=env["JAXEMBED_CACHE"], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + HANG_GUARD
            # Kill between checkpoints: once step 10 is committed (orbax renames the
            # finished step into place) and the metrics show step 15.
            while not ((workdir / "checkpoints" / "10").is_dir() and logged_steps(workdir)[-1:] >= [15]):
                assert proc.poll() is None, (
                    f"run ended before it could be killed:\n{(tmp_path / 'out.txt').read_text()}"
                )
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = [int(n) for n in checkpoint_names(workdir) if n.isdigit()]
    assert committed and max(committed) < STEPS, "the run finished before the kill: nothing to resume"
    assert logged_steps(workdir)[-1] > max(committed)  # rows past the checkpoint, to be dropped on resume
    assert not (workdir / "report.md").exists()

    resumed = jaxembed(train_args(workdir, text_path), env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from step {max(committed)}" in resumed.stdout

    reference, killed = run_lib.load_run(finished[0]), run_lib.load_run(workdir)
    assert reference.step == killed.step == STEPS
    np.testing.assert_array_equal(killed.token_VxD, reference.token_VxD)
    np.testing.assert_array_equal(killed.position_LxD, reference.position_LxD)

    def without_speed(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in rows]

    assert without_speed(metrics_rows(workdir)) == without_speed(metrics_rows(finished[0]))
    assert checkpoint_names(workdir) == ["30", "40"]


# --- Damaged checkpoints ---------------------------------------------------


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(finished_copy, text_path, capsys):
    corrupt(finished_copy / "checkpoints" / "40")
    files = sorted(
        p.relative_to(finished_copy / "checkpoints" / "40") for p in (finished_copy / "checkpoints" / "40").rglob("*")
    )

    # load_run only reads: it falls back too, but renames nothing.
    assert run_lib.load_run(finished_copy).step == 30
    assert checkpoint_names(finished_copy) == ["30", "40"]

    code, out, err = main_in_process(train_args(finished_copy, text_path, "--config.train.steps=50"), capsys)
    assert code == 0, err
    assert re.search(r"warning: checkpoint step 40 .* unreadable", err)
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert "Resuming from step 30" in out
    names = checkpoint_names(finished_copy)
    aside = [n for n in names if n.startswith("40.unreadable-")]
    assert len(aside) == 1, names
    assert (
        sorted(
            p.relative_to(finished_copy / "checkpoints" / aside[0])
            for p in (finished_copy / "checkpoints" / aside[0]).rglob("*")
        )
        == files
    )  # never deleted
    assert [n for n in names if n.isdigit()] == ["40", "50"]
    assert run_lib.load_run(finished_copy).step == 50
    assert [r["step"] for r in metrics_rows(finished_copy)] == list(range(0, 51, 5))


def test_all_checkpoints_unreadable_is_a_clear_error(finished_copy, text_path, env):
    for step in ("30", "40"):
        corrupt(finished_copy / "checkpoints" / step)
    proc = jaxembed(train_args(finished_copy, text_path), env)
    assert proc.returncode == 2
    assert "jaxembed train: error: none of the checkpoints" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "step 30" in proc.stderr and "step 40" in proc.stderr
    names = checkpoint_names(finished_copy)
    assert len(names) == 2 and all(".unreadable-" in n for n in names)
    # The same command again: nothing left to resume, and a fresh run would replace the run's files.
    kept = {p: p.read_bytes() for p in finished_copy.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}
    again = jaxembed(train_args(finished_copy, text_path), env)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip() == (
        f"jaxembed train: error: workdir {finished_copy}: every checkpoint of its run was set aside as unreadable "
        f"({', '.join(sorted(names))} in checkpoints/), so there is nothing to resume, and a new run here would "
        "replace its metrics and report. Start a new run with another --workdir, or delete checkpoints/ to start "
        "over here. Nothing was changed."
    )
    assert {
        p: p.read_bytes() for p in finished_copy.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")
    } == kept


# --- Divergence ------------------------------------------------------------


def test_divergence_on_resume_leaves_checkpoints_byte_identical(finished_copy, text_path, capsys):
    before = snapshot(finished_copy / "checkpoints")
    code, out, err = main_in_process(
        train_args(finished_copy, text_path, "--config.train.steps=60", "--config.optim.learning_rate=1e30"), capsys
    )
    assert code == 2
    assert f"Resuming from step {STEPS}" in out
    assert re.search(r"loss became (nan|inf|-inf) by step 4[1-5]", err), err
    assert "learning_rate" in err and "step 40" in err
    assert snapshot(finished_copy / "checkpoints") == before


def test_divergence_from_the_start_exits_2_without_checkpoints(tmp_path, text_path, capsys):
    workdir = tmp_path / "run"
    code, _, err = main_in_process(train_args(workdir, text_path, "--config.optim.learning_rate=1e30"), capsys)
    assert code == 2
    assert re.search(r"jaxembed train: error: the (training|validation) loss became (nan|inf|-inf)", err), err
    assert "optim.learning_rate" in err
    checkpoints = workdir / "checkpoints"
    assert not checkpoints.exists() or [p for p in checkpoints.iterdir() if p.name[0].isdigit()] == []


# --- train: usage errors -----------------------------------------------------


def test_unknown_config_key_suggests_the_closest_or_lists_fields(tmp_path, capsys):
    code, _, err = main_in_process(["train", "--workdir", tmp_path / "w", "--config.train.stepz=3"], capsys)
    assert code == 2
    # A close match alone: the full field list would bury it.
    assert err.strip() == (
        "jaxembed train: error: unrecognised argument '--config.train.stepz=3'. Did you mean --config.train.steps?"
    )
    code, _, err = main_in_process(["train", "--workdir", tmp_path / "w", "--config.zzz=3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "valid fields:" in err and "optim.learning_rate" in err and "data.batch_size" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--no-such-flag", "unrecognised argument '--no-such-flag': not an option of this command (see --help)"),
        (
            "--config.train.steps=abc",
            "train.steps='abc' is not allowed: train.steps takes an integer (this config: 300)",
        ),
        ("--config.train.steps=2.5", "train.steps='2.5' is not allowed: train.steps takes an integer"),
        (
            "--config.optim.learning_rate=fast",
            "optim.learning_rate='fast' is not allowed: optim.learning_rate takes a number",
        ),
    ],
)
def test_a_mistyped_option_or_value_is_named_in_words(tmp_path, capsys, flag, expected):
    code, _, err = main_in_process(["train", "--workdir", tmp_path / "w", flag], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert expected in err
    assert "valid fields" not in err and "int()" not in err and "float" not in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--workdir", "W", "--corpus", "shakespeare"], "argument --corpus: invalid choice: 'shakespeare'"),
        (["walkthrough", "--corpus", "shakespeare"], "argument --corpus: invalid choice: 'shakespeare'"),
        (["trian"], "argument command: invalid choice: 'trian'"),
        (["neighbors", " thou"], "the following arguments are required: --workdir"),
    ],
)
def test_argument_errors_are_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert len(err.strip().splitlines()) == 1, err  # no usage block before it
    assert expected in err and err.startswith("jaxembed")


@pytest.mark.parametrize(
    "override, hint",
    [
        ("--config.train.steps=abc", "train.steps"),
        ("--config.optim.learning_rate=fast", "learning_rate"),
        ("--config.train.steps=0", "train.steps"),
    ],
)
def test_bad_config_value_exits_2(tmp_path, capsys, override, hint):
    code, _, err = main_in_process(["train", "--workdir", tmp_path / "w", "--text", __file__, override], capsys)
    assert code == 2
    assert err.startswith("jaxembed train: error:") and hint in err


def test_unwritable_workdir_exits_2_quickly(tmp_path, text_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    start = time.monotonic()
    code, _, err = main_in_process(train_args(blocker / "run", text_path), capsys)
    assert code == 2
    assert str(blocker / "run") in err and "cannot be written" in err
    assert time.monotonic() - start < 20


# --- neighbors / export ----------------------------------------------------


def test_neighbors_prints_centred_cosine_neighbours_from_the_latest_checkpoint(finished, capsys):
    workdir, _ = finished
    code, out, err = main_in_process(["neighbors", "--workdir", workdir, " thou", " the", "-k", "3"], capsys)
    assert code == 0, err
    assert out.startswith(f"Step {STEPS} of {workdir}: centred cosine")

    pair_mean, pair_std = map(float, re.search(r"random pair: ([+-][\d.]+) ± ([\d.]+)", out).groups())
    run = run_lib.load_run(workdir)
    table = run.token_VxD.astype(np.float64)
    candidates = [i for i in range(len(run.token_counts_V)) if run.token_counts_V[i] >= 3]  # the report's rule
    mean = table[candidates].mean(axis=0)
    enc = get_encoding("gpt2")
    for word, line in zip([" thou", " the"], out.splitlines()[1:], strict=True):
        (query,) = enc.encode(word)
        q = table[query] - mean
        cosine = {
            j: q @ (table[j] - mean) / (np.linalg.norm(q) * np.linalg.norm(table[j] - mean))
            for j in candidates
            if j != query
        }
        top = sorted(cosine, key=lambda j: (-cosine[j], j))[:3]
        expected = f"{analysis.token_label(enc, query)} -> " + ", ".join(
            f"{analysis.token_label(enc, j)} {cosine[j]:.2f} (σ)" for j in top
        )
        # Each cosine is followed by its distance from the header's random-pair mean, in its stds.
        assert re.sub(r" +->", " ->", re.sub(r"\((-?[\d.]+)σ\)", "(σ)", line)) == expected
        for j, sigma in zip(top, re.findall(r"\((-?[\d.]+)σ\)", line), strict=True):
            assert float(sigma) == pytest.approx((cosine[j] - pair_mean) / pair_std, abs=0.05 + 0.01 / pair_std)


@pytest.mark.parametrize("word, hint", [(" Capulet", "encodes to 2 GPT-2 tokens"), ("thou", "' thou'")])
def test_neighbors_of_a_multi_token_word_exits_2_with_a_hint(finished, capsys, word, hint):
    code, _, err = main_in_process(["neighbors", "--workdir", finished[0], word], capsys)
    assert code == 2 and hint in err


def test_neighbors_of_a_non_run_directory_exits_2(tmp_path, capsys):
    code, _, err = main_in_process(["neighbors", "--workdir", tmp_path, " thou"], capsys)
    assert code == 2 and "is not a jaxembed run" in err
    missing = tmp_path / "nope"
    code, _, err = main_in_process(["sample", "--workdir", missing, "--prompt", "ROMEO:"], capsys)
    assert code == 2 and err.splitlines() == [
        f"jaxembed sample: error: {missing} does not exist: give the --workdir of a run you trained."
    ]


def test_export_writes_projector_files(finished, tmp_path, capsys):
    workdir, _ = finished
    out_dir = tmp_path / "proj"
    code, out, err = main_in_process(["export", "--workdir", workdir, "--out", out_dir, "--tokens", "50"], capsys)
    assert code == 0, err
    for name in ("token_embeddings.npy", "position_embeddings.npy", "vectors.tsv", "metadata.tsv"):
        assert str(out_dir / name) in out
    run = run_lib.load_run(workdir)
    np.testing.assert_array_equal(np.load(out_dir / "token_embeddings.npy"), run.token_VxD)
    metadata = (out_dir / "metadata.tsv").read_text().splitlines()
    ids = [int(line.rsplit("\t", 1)[1]) for line in metadata[1:]]
    # The 50 most frequent training tokens, counted independently.
    config = run_lib.load_run(workdir).config
    splits = data.splits.split_corpus(
        pathlib.Path(config.data.text).read_text(encoding="utf-8"), val_fraction=config.data.val_fraction
    )
    counts = np.bincount(splits.train_ids, minlength=50257)
    assert ids == sorted(range(50257), key=lambda i: (-counts[i], i))[:50]
    np.testing.assert_allclose(np.loadtxt(out_dir / "vectors.tsv", delimiter="\t"), run.token_VxD[ids], rtol=1e-6)
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "metadata.tsv",
        "position_embeddings.npy",
        "token_embeddings.npy",
        "vectors.tsv",
    ]


def test_export_by_default_exports_the_rows_tensorboard_shows(finished, tmp_path, capsys):
    workdir, _ = finished
    code, _, err = main_in_process(["export", "--workdir", workdir, "--out", tmp_path / "proj"], capsys)
    assert code == 0, err
    shown = np.loadtxt(workdir / "projector" / "token_embeddings" / "tensor.tsv", delimiter="\t", ndmin=2)
    exported = np.loadtxt(tmp_path / "proj" / "vectors.tsv", delimiter="\t", ndmin=2)
    config = run_lib.load_run(workdir).config
    assert len(exported) == len(shown) == min(config.report.projector_tokens, len(exported))
    np.testing.assert_array_equal(exported.astype(np.float32), shown.astype(np.float32))


# --- walkthrough -----------------------------------------------------------


def parse_walkthrough(stdout):
    rows = [json.loads(m) for m in re.findall(r"^\s+(\[[\d, ]+\])\s+->", stdout, re.MULTILINE)]
    shapes = re.findall(r"^(token|positional|input) embeddings\s+(\([\d, ]+\))", stdout, re.MULTILINE)
    return rows, dict(shapes)


def test_walkthrough_on_python_docs(env):
    proc = jaxembed(["walkthrough", "--corpus", "python-docs"], env)
    assert proc.returncode == 0, proc.stderr
    rows, shapes = parse_walkthrough(proc.stdout)
    assert shapes == {"token": "(8, 4, 256)", "positional": "(4, 256)", "input": "(8, 4, 256)"}
    # The same 32 ids from the text the command cached, tokenized independently.
    (cached,) = pathlib.Path(env["JAXEMBED_CACHE"]).glob("python-docs-*.txt")
    enc = get_encoding("gpt2")
    ids = enc.encode(cached.read_text(encoding="utf-8"), allowed_special="all")[:32]
    assert rows == [ids[i : i + 4] for i in range(0, 32, 4)]
    for row in rows:
        assert repr(enc.decode(row)) in proc.stdout


def test_walkthrough_on_the_shared_corpus_matches_the_seed(corpus_path, capsys):
    code, out, err = main_in_process(["walkthrough", "--text", corpus_path], capsys)
    assert code == 0, err
    rows, shapes = parse_walkthrough(out)
    assert rows[0] == [464, 4935, 20336, 46566]  # 'The Project Gutenberg eBook'
    assert rows[1] == [286, 43989, 290, 38201]
    assert len(rows) == 8 and shapes["input"] == "(8, 4, 256)"
    # It keeps the header, as the seed did, and says so: train's count differs for that reason.
    text = corpus.load_text(corpus_path)
    assert (
        f"Corpus: {len(text):,} characters -> {len(get_encoding('gpt2').encode(text)):,} GPT-2 tokens\n"
        f"Project Gutenberg header and licence kept: all {len(text):,} characters "
        f"({len(corpus.strip_gutenberg(text)):,} without them); jaxembed train strips them.\n"
    ) in out


@pytest.fixture(scope="module")
def gutenberg_book(tmp_path_factory, corpus_path):
    """The shared corpus's first 6,000 and last 24,000 characters: its header, some play, its licence."""
    text = corpus_path.read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("book") / "short_pg1513.txt"
    path.write_text(text[:6_000] + text[-24_000:], encoding="utf-8")
    return path


def corpus_line(stdout):
    (line,) = re.findall(r"^Corpus: .*$", stdout, re.MULTILINE)
    return line


def test_train_and_walkthrough_say_what_they_did_with_a_gutenberg_header(gutenberg_book, tmp_path, capsys):
    # One rule, in the output: train strips the header and licence and says so; the walk-through
    # keeps them (the seed's text) and says so, and with --strip-gutenberg reads what train reads.
    text = corpus.load_text(gutenberg_book)
    body = corpus.strip_gutenberg(text)
    assert 0 < len(body) < len(text) - 2_000
    num_tokens = len(get_encoding("gpt2").encode(body))
    args = train_args(tmp_path / "run", gutenberg_book, "--config.train.steps=2", "--config.train.eval_every=2")
    code, out, err = main_in_process(args, capsys)
    assert code == 0, err
    num_val = round(num_tokens * 0.1)
    assert corpus_line(out) == (
        f"Corpus: Project Gutenberg header and licence stripped: {len(body):,} of {len(text):,} characters kept "
        f"-> {num_tokens:,} gpt2 tokens ({num_tokens - num_val:,} for training, {num_val:,} held out)."
    )

    code, out, err = main_in_process(["walkthrough", "--text", gutenberg_book], capsys)
    assert code == 0, err
    assert "Project Gutenberg header and licence kept" in out and "jaxembed train strips them." in out
    assert f"-> {num_tokens:,} GPT-2 tokens" not in out

    code, out, err = main_in_process(["walkthrough", "--text", gutenberg_book, "--strip-gutenberg"], capsys)
    assert code == 0, err
    assert corpus_line(out) == f"Corpus: {len(body):,} characters -> {num_tokens:,} GPT-2 tokens"
    assert f"Project Gutenberg header and licence stripped: {len(body):,} of {len(text):,} characters kept." in out
    rows, _ = parse_walkthrough(out)
    assert rows[0] == get_encoding("gpt2").encode(body)[:4]


def test_train_says_when_a_text_has_no_gutenberg_header(finished):
    # The shared test text is the corpus's head: a START line but no END line, so nothing is cut.
    workdir, proc = finished
    num_tokens = len(get_encoding("gpt2").encode(corpus.load_text(run_lib.load_run(workdir).config.data.text)))
    assert re.fullmatch(
        rf"Corpus: all 40,000 characters kept \(no Project Gutenberg START and END lines to strip\) "
        rf"-> {num_tokens:,} gpt2 tokens \([\d,]+ for training, [\d,]+ held out\)\.",
        corpus_line(proc.stdout),
    )


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_jax_platforms_naming_a_missing_backend_is_one_line(env, platform):
    proc = jaxembed(["plan"], {**env, "JAX_PLATFORMS": platform})
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"jaxembed plan: error: JAX_PLATFORMS='{platform}' names a backend") and "cpu" in line
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("count", ["-5", "0"])
def test_export_refuses_a_token_count_below_one(finished, tmp_path, capsys, count):
    out_dir = tmp_path / "proj"
    code, _, err = main_in_process(["export", "--workdir", finished[0], "--out", out_dir, "--tokens", count], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"jaxembed export: error: --tokens {count} is not allowed; it must be an integer >= 1."
    ]
    assert not out_dir.exists()


# --- sample ----------------------------------------------------------------


def sample_args(workdir, *extra):
    return ["sample", "--workdir", workdir, "--prompt", "ROMEO:", "--tokens", "20", *extra]


def test_sample_prints_the_prompt_and_its_continuation_the_same_for_a_seed(finished, env, capsys):
    workdir, _ = finished
    args = sample_args(workdir, "--temperature", "0.8", "--top-k", "40", "--seed", "3")
    code, out, err = main_in_process(args, capsys)
    assert code == 0, err
    header, text = out.split("\n", 1)
    assert header == f"Step {STEPS} of {workdir}, temperature 0.8, top-k 40, seed 3:"
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) > len("ROMEO:")
    proc = jaxembed([str(a) for a in args], env)  # another process: the same text
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == out
    run = run_lib.load_run(workdir)
    expected = nn.sample_text(run.model, run.params, run.enc, "ROMEO:", 20, temperature=0.8, top_k=40, seed=3)
    assert text == expected + "\n"
    # The defaults are the README's and the run report's: temperature 0.8, top-k 40, seed 0.
    code, other, _ = main_in_process(sample_args(workdir), capsys)
    assert code == 0 and other.split("\n", 1)[0] == f"Step {STEPS} of {workdir}, temperature 0.8, top-k 40, seed 0:"
    assert other.split("\n", 1)[1] != text  # seed 0, not 3


def test_sample_top_k_1_is_greedy_decoding_of_the_checkpoint(finished, capsys):
    workdir, _ = finished
    code, out, err = main_in_process(sample_args(workdir, "--top-k", "1", "--step", "30"), capsys)
    assert code == 0, err
    header, text = out.split("\n", 1)
    assert header == f"Step 30 of {workdir}, temperature 0.8, top-k 1, seed 0:"
    run = run_lib.load_run(workdir, step=30)
    length = run.config.data.max_length
    sequence = run.enc.encode("ROMEO:")
    apply = jax.jit(run.model.apply)  # the model alone, at each real length (compiled once per length)
    for _ in range(20):  # past the context of 8: the model sees the last 8 tokens
        logits = apply(run.params, np.asarray(sequence[-length:], np.int32)[None])
        sequence.append(int(np.argmax(logits[0, -1])))
    assert text == run.enc.decode(sequence) + "\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "--prompt='' is not allowed: it must encode to at least one token."),
        (["--prompt", " the" * 9], "--prompt is 9 tokens; the model's context is 8 (data.max_length): give at most 8."),
        (["--tokens", "0"], "--tokens=0 is not allowed: it must be an integer >= 1."),
        (["--temperature", "0"], "--temperature=0.0 is not allowed: it must be a finite number > 0."),
        (["--temperature", "nan"], "--temperature=nan is not allowed: it must be a finite number > 0."),
        (["--top-k", "0"], "--top-k=0 is not allowed: it must be an integer in [1, 50257]."),
        (["--top-k", "50258"], "--top-k=50258 is not allowed: it must be an integer in [1, 50257]."),
        (["--seed", "-1"], "--seed=-1 is not allowed: it must be an integer in [0, 4294967295]."),
    ],
)
def test_sample_refuses_bad_settings_in_one_line(finished, capsys, extra, message):
    code, out, err = main_in_process(sample_args(finished[0], *extra), capsys)
    assert code == 2 and not out
    assert err.splitlines() == [f"jaxembed sample: error: {message}"]
