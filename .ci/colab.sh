#!/usr/bin/env bash
# The notebook on a runtime pinned to Google Colab's (.ci/colab-pins.txt, Python 3.13): jaxembed is
# installed the way the notebook's first cell does it (pip install $JAXEMBED_PIP_SPEC, here this
# checkout), then the notebook runs top to bottom. Fails if that install changes a pinned package,
# on any cell error, or on anything a cell writes to stderr (a warning a learner would see in red).
# Needs ../shared/data; reaches only the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
corpus=$(realpath ../shared/data/romeo_juliet_gutenberg.txt)
root="${PYENV_ROOT:-$HOME/.pyenv}"
python313=$(ls -d "$root"/versions/3.13* 2>/dev/null | sort -V | tail -1)
if [ -z "$python313" ]; then
  echo "colab: no Python 3.13 under $root/versions; install one (pyenv install 3.13) to run this check" >&2
  exit 1
fi
echo "colab: Python $(basename "$python313") (Colab runs 3.13; the newest 3.13 here)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python313/bin/python3" -m venv "$tmp/venv"
. "$tmp/venv/bin/activate"
python -m pip install -q --upgrade pip
# The runtime: Colab's pins plus what runs a notebook (Colab has its own kernel; any version will do).
pip install -q -r .ci/colab-pins.txt nbclient nbformat ipykernel jupytext
pip freeze | sort > "$tmp/before.txt"
cd "$tmp"
JAXEMBED_PIP_SPEC="$repo" JAXEMBED_CORPUS="$corpus" JAXEMBED_CACHE="$tmp/cache" MPLBACKEND=module://matplotlib_inline.backend_inline \
  python - "$repo/notebooks/token_embeddings.py" <<'PY'
import sys, time
import jupytext, nbclient

nb = jupytext.read(sys.argv[1])
start = time.perf_counter()
try:
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3").execute()
except nbclient.exceptions.CellExecutionError as e:
    sys.exit(f"colab: a notebook cell failed:\n{e}")
noise = [(i, o.text) for i, c in enumerate(nb.cells) if c.cell_type == "code"
         for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
for i, text in noise:
    print(f"colab: cell {i} wrote to stderr: {text!r}", file=sys.stderr)
if noise:
    sys.exit(1)
print(f"colab: notebook ran without errors or stderr output in {time.perf_counter() - start:.0f} s")
PY
pip freeze | sort > "$tmp/after.txt"
changed=$(python - "$repo/.ci/colab-pins.txt" "$tmp/before.txt" "$tmp/after.txt" <<'PY'
import re, sys
pins = [line.split("==")[0].lower() for line in open(sys.argv[1]) if "==" in line and not line.startswith("#")]
def versions(path):
    return {re.split("[=@ ]", l)[0].lower().replace("_", "-"): l.strip() for l in open(path) if l.strip()}
before, after = versions(sys.argv[2]), versions(sys.argv[3])
print(" ".join(f"{before.get(n)} -> {after.get(n)}" for n in pins if before.get(n) != after.get(n)))
PY
)
if [ -n "$changed" ]; then
  echo "colab: installing jaxembed changed pinned packages: $changed" >&2
  exit 1
fi
grep -q "^jaxembed" "$tmp/after.txt" || { echo "colab: the notebook's first cell did not install jaxembed" >&2; exit 1; }
echo "colab: installing jaxembed changed no pinned package"
