"""Throughput and peak memory of ``token_files.tokenize_files`` vs one ``enc.encode`` call.

Builds synthetic corpora from the offline ``python-docs`` corpus (paragraphs
shuffled into ~1 MB files) under a temporary directory, runs each case in a
fresh subprocess (so its peak RSS is its own), prints a table, and deletes
everything it wrote:

  python scripts/measure_token_files.py                 # 30 MB and 120 MB corpora
  python scripts/measure_token_files.py --sizes-mb 10   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

USAGE = """
import resource
def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": r.ru_utime + r.ru_stime, "peak_rss_mb": r.ru_maxrss / 1024}
"""

CHILD_TOKENIZE = (
    USAGE
    + """
import json, sys, time
from jaxembed.text.token_files import tokenize_files
t = time.perf_counter()
meta = tokenize_files([sys.argv[1]], sys.argv[2], workers=int(sys.argv[3]))
dt = time.perf_counter() - t
print(json.dumps({"tokens": meta["num_tokens"], "seconds": dt, **usage()}))
"""
)

# The path this replaces: one str for the whole corpus, one enc.encode call (data.tokenize).
CHILD_ENCODE = (
    USAGE
    + """
import json, pathlib, sys, time
from jaxembed.text.tokenizer import get_encoding
enc = get_encoding("gpt2")
files = sorted(pathlib.Path(sys.argv[1]).rglob("*.txt"))
text = "<|endoftext|>".join(p.read_text(encoding="utf-8") for p in files) + "<|endoftext|>"
t = time.perf_counter()
ids = enc.encode(text, allowed_special={"<|endoftext|>"})
dt = time.perf_counter() - t
print(json.dumps({"tokens": len(ids), "seconds": dt, **usage()}))
"""
)


def build_corpus(root: Path, size_mb: float, paragraphs: list[str], seed: int = 0) -> int:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    total, i = 0, 0
    while total < size_mb * 1e6:
        text = "\n\n".join(rng.choices(paragraphs, k=400))
        data = text.encode("utf-8")
        (root / f"{i // 100:03d}" / f"{i:05d}.txt").parent.mkdir(exist_ok=True)
        (root / f"{i // 100:03d}" / f"{i:05d}.txt").write_bytes(data)
        total += len(data)
        i += 1
    return total


def run(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[30, 120])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline-mb", type=float, default=None, help="corpus size for the enc.encode baseline")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from jaxembed.text import corpus

    paragraphs = [p for p in corpus.load_text("python-docs").split("\n\n") if p.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="token_files_bench_"))
    rows = []
    try:
        for size in args.sizes_mb:
            src = tmp / f"corpus_{size:g}MB"
            nbytes = build_corpus(src, size, paragraphs)
            for w in args.workers:
                r = run(CHILD_TOKENIZE, str(src), str(tmp / f"out_{size:g}_{w}"), str(w))
                rows.append({"case": f"tokenize_files workers={w}", "MB": nbytes / 1e6, **r})
                shutil.rmtree(tmp / f"out_{size:g}_{w}")
            if size == (args.baseline_mb or max(args.sizes_mb)):
                r = run(CHILD_ENCODE, str(src))
                rows.append({"case": "one enc.encode(str)", "MB": nbytes / 1e6, **r})
            shutil.rmtree(src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'case':28} {'MB':>7} {'tokens':>11} {'wall s':>7} {'Mtok/s':>7} {'proc CPU s':>10} {'peak RSS MB':>11}")
    for r in rows:
        print(
            f"{r['case']:28} {r['MB']:7.1f} {r['tokens']:11d} {r['seconds']:7.2f} "
            f"{r['tokens'] / r['seconds'] / 1e6:7.2f} {r['cpu_s']:10.1f} {r['peak_rss_mb']:11.0f}"
        )
    print(f"load average: {os.getloadavg()}")
    print(
        f"(the encode baseline's CPU s include reading and joining the files; this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; {time.ctime()})"
    )


if __name__ == "__main__":
    main()
