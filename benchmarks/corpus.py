"""The corpus section: tokenizing a large corpus into a token file, and training from it.

A synthetic corpus is written into a temporary directory at each of two sizes
(``SIZES_MB``; ``QUICK_SIZES_MB`` for ``--quick``) and deleted afterwards:
files of ``file_mb`` MB made of the offline ``python-docs`` corpus's
paragraphs (``jaxembed.text.corpus.load_text("python-docs")``) in a fresh random
order per file, so the text is not one repeated string (``build_corpus``).
Every measurement runs in a fresh child process (``python -m
benchmarks.corpus --child SPEC``) and reports that process's kernel
high-water mark (``VmHWM``), reset with ``/proc/self/clear_refs`` just before
the measured call, above the resident set at that moment:

* ``tokenize`` children, one per run: ``jaxembed.text.token_files.tokenize_files``
  with ``workers=1``, with ``workers=2``, and one ``enc.encode`` call on the
  same text (the documents joined by ``<|endoftext|>``, read into memory
  before the reset): tokens per second and peak memory of each.
* ``train`` child: ``jaxembed.train.loop.train_and_evaluate(config, None, ...)``
  for a few steps of ``named_config("tiny")``, either with ``config.data.tokens``
  (the memory-mapped ``tokens.npy``) or with ``text=`` (tokenized into an
  in-memory int32 array). Its peak includes reading the text for ``text=``.
  ``--quick`` trains at its larger size only.

If the token file's memory does not depend on the corpus, the ``tokens``
peaks at the two sizes are about equal while the ``text=`` peaks grow with it.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python benchmarks/corpus.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

#: Corpus sizes (MB = 10^6 bytes) of a full run and of ``--quick``, and the size of each file.
SIZES_MB = (50, 200)
QUICK_SIZES_MB = (1, 2)
FILE_MB, QUICK_FILE_MB = 4.0, 0.25
#: Training steps per child; metrics rows every ``TRAIN_LOG_EVERY`` steps (the first row includes compiling).
TRAIN_STEPS, QUICK_TRAIN_STEPS = 60, 6
TRAIN_LOG_EVERY, QUICK_TRAIN_LOG_EVERY = 10, 2
TOKENIZE_WORKERS = (1, 2)
SEPARATOR = "<|endoftext|>"
SEED = 0


# --- The synthetic corpus --------------------------------------------------------------


def paragraphs() -> list[str]:
    """The ``python-docs`` corpus's non-blank paragraphs (blocks between blank lines).

    Paragraphs holding ``<|endoftext|>``, a carriage return or a BOM are left
    out, so that reading a file back (``corpus.load_text(strip=True)``
    normalises those) gives exactly the written text.
    """
    from jaxembed.text import corpus

    text = corpus.load_text("python-docs")
    return [p for p in text.split("\n\n") if p.strip() and not any(s in p for s in (SEPARATOR, "\r", "\ufeff"))]


def build_corpus(out_dir: str | pathlib.Path, total_bytes: int, file_bytes: int, seed: int = SEED) -> dict:
    """Writes ``doc_00000.txt``, ... of about ``file_bytes`` UTF-8 bytes each, ``total_bytes`` in all.

    Each file is python-docs paragraphs joined by blank lines, drawn from a
    stream of random permutations of all paragraphs (a fresh permutation
    whenever one is used up), so no two files are alike. Deterministic in
    ``seed``.

    Returns:
      ``{"files", "bytes", "sha256", "build_s"}``: how many files, their
      total size, the SHA-256 of their concatenation in path order, and
      the seconds spent.
    """
    import numpy as np

    start = time.perf_counter()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paras = [p.encode("utf-8") for p in paragraphs()]
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(paras)), 0
    digest, written, index = hashlib.sha256(), 0, 0
    while written < total_bytes:
        budget = min(file_bytes, total_bytes - written)
        parts, size = [], 0
        while size < budget:
            if pos == len(order):
                order, pos = rng.permutation(len(paras)), 0
            parts.append(paras[order[pos]])
            size += len(parts[-1]) + 2
            pos += 1
        body = b"\n\n".join(parts) + b"\n"
        (out / f"doc_{index:05d}.txt").write_bytes(body)
        digest.update(body)
        written += len(body)
        index += 1
    return {"files": index, "bytes": written, "sha256": digest.hexdigest(), "build_s": time.perf_counter() - start}


def corpus_text(corpus_dir: str | pathlib.Path) -> str:
    """The corpus as one string: each file's text followed by ``<|endoftext|>``, files in path order.

    This is the layout ``tokenize_files`` writes, so ``enc.encode(text,
    allowed_special={"<|endoftext|>"})`` gives the ids of ``tokens.npy``.
    """
    files = sorted(pathlib.Path(corpus_dir).glob("*.txt"))
    return "".join(f.read_text(encoding="utf-8") + SEPARATOR for f in files)


# --- Children ---------------------------------------------------------------------------------


def _measured(fn):
    """``fn()`` timed, with the high-water mark reset first: ``(result, seconds, memory dict)``."""
    resettable = harness.reset_peak()
    before = harness.rss_kib()["VmRSS"]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    after = harness.rss_kib()
    if not resettable:  # without the reset, the high-water mark may be older than this call
        import resource

        after["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        result,
        seconds,
        {
            "peak_MiB": after["VmHWM"] / 1024,  # the whole process's high-water mark
            "peak_above_MiB": (after["VmHWM"] - before) / 1024,
            "before_MiB": before / 1024,
            "after_MiB": after["VmRSS"] / 1024,
            # Right after the call, results still alive: what is file-backed (mapped pages, reclaimable) and not.
            "after_anon_MiB": after.get("RssAnon", 0) / 1024,
            "after_file_MiB": after.get("RssFile", 0) / 1024,
            "method": "VmHWM reset by /proc/self/clear_refs" if resettable else "ru_maxrss (whole process)",
        },
    )


def tokenize_child(spec: dict) -> dict:
    """One tokenizer run: ``tokenize_files`` with ``spec["workers"]``, or one ``enc.encode`` of the corpus text.

    ``enc.encode`` gets the text read into memory before the measurement
    (``corpus_text``); with ``spec["tokens_dir"]`` its ids are compared with
    that token file's.
    """
    import numpy as np

    from jaxembed.text import token_files, tokenizer

    enc = tokenizer.get_encoding("gpt2")
    enc.encode("warm up the tokenizer", allowed_special={SEPARATOR})
    if spec["impl"] == "tokenize_files":
        dest = pathlib.Path(spec["out"])
        meta, seconds, mem = _measured(
            lambda: token_files.tokenize_files([spec["corpus"]], dest, workers=spec["workers"], overwrite=True)
        )
        return {
            "impl": f"tokenize_files(workers={spec['workers']})",
            "workers": spec["workers"],
            "seconds": seconds,
            "tokens": int(meta["num_tokens"]),
            "documents": int(meta["num_documents"]),
            "dtype": meta["dtype"],
            "tokens_sha256": meta["tokens_sha256"],
            "tokens_per_s": meta["num_tokens"] / seconds,
            "token_file_bytes": (dest / token_files.TOKENS_FILE).stat().st_size,
            "tokens_dir": str(dest),
            **mem,
        }
    text = corpus_text(spec["corpus"])
    ids, seconds, mem = _measured(lambda: enc.encode(text, allowed_special={SEPARATOR}))
    out = {
        "impl": "enc.encode (one call, text in memory)",
        "workers": 1,
        "seconds": seconds,
        "tokens": len(ids),
        "tokens_per_s": len(ids) / seconds,
        "text_chars": len(text),
        **mem,
    }
    if spec.get("tokens_dir"):  # the same ids: the streaming tokenizer wrote what one encode call gives
        tokens, _ = token_files.open_tokens(spec["tokens_dir"])
        out["equals_token_file"] = bool(len(ids) == len(tokens) and np.array_equal(tokens, ids))
    return out


def train_child(spec: dict) -> dict:
    """A few steps of ``named_config("tiny")`` through ``train_and_evaluate``, from a token file or from ``text=``."""
    import jax
    import numpy as np

    from jaxembed.config import named_config
    from jaxembed.train.loop import train_and_evaluate

    jax.devices()
    config = named_config("tiny")
    config.train.steps = spec["steps"]
    config.train.log_every = spec["log_every"]
    config.train.eval_every = spec["steps"]
    config.train.eval_batches = 2
    if spec["source"] == "tokens":
        config.data.tokens = spec["path"]
        run = lambda: train_and_evaluate(config, None, progress=False)  # noqa: E731
    else:

        def run():  # reading the text is part of training from text
            return train_and_evaluate(config, None, text=corpus_text(spec["path"]), progress=False)

    result, seconds, mem = _measured(run)
    rows = [r for r in result.metrics if "tokens_per_sec" in r]  # the step-0 row has the validation loss only
    steady = [r["tokens_per_sec"] for r in rows[1:]]  # the first window includes the first steps' warm-up
    ids = result.splits.train_ids
    return {
        "seconds": seconds,
        "steps": spec["steps"],
        "tokens_per_s": float(np.median(steady)) if steady else None,
        "first_row_tokens_per_s": rows[0]["tokens_per_sec"],
        "final_train_loss": rows[-1]["train_loss"],
        "val_loss": rows[-1].get("val_loss"),
        "corpus_tokens": int(len(result.splits.train_ids) + len(result.splits.val_ids)),
        "ids_dtype": str(ids.dtype),
        "memory_mapped": isinstance(ids, np.memmap) or isinstance(getattr(ids, "base", None), np.memmap),
        **mem,
    }


def child_main(spec: dict) -> dict:
    """``python -m benchmarks.corpus --child SPEC``: a ``tokenize`` or a ``train`` job (``spec["job"]``)."""
    return tokenize_child(spec) if spec["job"] == "tokenize" else train_child(spec)


# --- The section --------------------------------------------------------------------------------


def section(settings: harness.Settings, tmp_root: str | None = None) -> dict:
    """Both corpus sizes: build, tokenize, train from the token file and from text; then delete them."""
    quick = settings.quick
    sizes, file_mb = (QUICK_SIZES_MB, QUICK_FILE_MB) if quick else (SIZES_MB, FILE_MB)
    steps, log_every = (QUICK_TRAIN_STEPS, QUICK_TRAIN_LOG_EVERY) if quick else (TRAIN_STEPS, TRAIN_LOG_EVERY)
    results = {"sizes": [], "file_MB": file_mb, "seed": SEED, "train_config": "tiny", "train_steps": steps}
    with tempfile.TemporaryDirectory(prefix="jaxembed-bench-corpus-", dir=tmp_root) as tmp:
        results["tmp_dir"] = tmp
        for size_mb in sizes:
            root = pathlib.Path(tmp) / f"{size_mb}MB"
            built = build_corpus(root / "text", int(size_mb * 1e6), int(file_mb * 1e6))
            row = {"target_MB": size_mb, **built}
            base = {"job": "tokenize", "corpus": str(root / "text")}
            rows = []
            for workers in TOKENIZE_WORKERS:  # one fresh process per run: each peak is its own
                out = str(root / f"tokens_workers{workers}")
                spec = {**base, "impl": "tokenize_files", "workers": workers, "out": out}
                rows.append(harness.run_child("benchmarks.corpus", spec, timeout=1800))
            tokens_dir = rows[-1]["tokens_dir"]
            for r in rows[:-1]:
                shutil.rmtree(r["tokens_dir"])  # the last token file is kept for training
            rows.append(harness.run_child("benchmarks.corpus", {**base, "impl": "encode", "tokens_dir": tokens_dir}))
            row["tokenize"] = {"rows": rows, "tokens_dir": tokens_dir}
            row["train"] = {}
            if quick and size_mb != sizes[-1]:  # a smoke run trains at its larger size only: 2 children fewer
                sources = ()
            else:
                sources = (("tokens", row["tokenize"]["tokens_dir"]), ("text", str(root / "text")))
            for source, path in sources:
                spec = {"job": "train", "source": source, "path": path, "steps": steps, "log_every": log_every}
                row["train"][source] = harness.run_child("benchmarks.corpus", spec, timeout=1800)
            shutil.rmtree(root)  # free the disk before the next size
            results["sizes"].append(row)
            _print(row)
    return results


def _print(row: dict) -> None:
    print(f"corpus {row['bytes'] / 1e6:,.1f} MB in {row['files']} files:", flush=True)
    for r in row["tokenize"]["rows"]:
        print(
            f"  {r['impl']:<40} {r['tokens']:>12,} tokens {r['tokens_per_s'] / 1e6:7.2f} Mtok/s  "
            f"peak {r['peak_MiB']:8.1f} MiB ({r['peak_above_MiB']:+8.1f})",
            flush=True,
        )
    for source, r in row["train"].items():
        print(
            f"  train from {source:<6} {r['corpus_tokens']:>12,} tokens {r['tokens_per_s'] or 0:>10,.0f} tok/s  "
            f"peak {r['peak_MiB']:8.1f} MiB ({r['peak_above_MiB']:+8.1f}), {r['seconds']:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(harness.child_entry(child_main))
