# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Token Embeddings, in JAX
#
# How does a language model turn text into numbers it can compute with? It splits the
# text into **tokens**, gives each token id a learned vector (its **embedding**), and adds
# a learned vector for each **position**. This notebook builds those pieces in
# [JAX](https://docs.jax.dev) and [Flax](https://flax.readthedocs.io) with the `jaxembed`
# library, then trains them and looks at what they learned:
#
# 1. **Token embeddings**: a toy table of 6 tokens x 3 dimensions
# 2. **GPT-2 scale**: 50,257 tokens x 256 dimensions, and a batch of *Romeo and Juliet*
# 3. **Positional embeddings**: one learned vector per position
# 4. **Input embeddings**: token + positional, broadcast over the batch
# 5. **Training**: a few hundred optimiser steps, and pictures of what changed
# 6. **One attention layer**: the positions learn distance, and the model writes text
# 7. **Other position schemes**: sinusoidal, rotary, ALiBi, none, and what happens past
#    the trained length
# 8. **What a trained table looks like**: GPT-2's own 1,024 positions beside yours
#
# It is a port of a PyTorch notebook. Where JAX works differently (random keys,
# parameters, compilation, immutable arrays, out-of-range ids) the notebook says so
# where it first matters. It runs on a CPU in about two minutes, and unchanged on a
# GPU or TPU runtime.

# %% [markdown]
# ## Setup
#
# On Colab, or anywhere `jaxembed` is not installed yet, the next cell installs it.
# **`JAXEMBED_PIP_SPEC` is a placeholder**: `jaxembed` has no public address yet, so
# replace `<org>` with the repository's real owner (or set the environment variable to
# a wheel or a local checkout) before running it there.

# %%
import os
import subprocess
import sys

# PLACEHOLDER: point this at the real repository (or a wheel, or a local path).
JAXEMBED_PIP_SPEC = os.environ.get("JAXEMBED_PIP_SPEC", "jaxembed @ git+https://github.com/<org>/jaxembed")

try:
    import jaxembed
except ImportError:  # Not installed here (e.g. a fresh Colab runtime): install it.
    # pip's notices (and progress) would show in red; its output is shown only if it fails.
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", JAXEMBED_PIP_SPEC], capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install {JAXEMBED_PIP_SPEC} failed:\n{pip.stdout}{pip.stderr}")
    import jaxembed

print(f"jaxembed {jaxembed.__version__}")

# %% [markdown]
# The imports. `jax.numpy` (`jnp`) mirrors NumPy; `nn` holds the Flax embedding
# layers and the model, `data` the sliding-window loader, `train` and `report` the training
# run and its pictures.

# %%
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from jax.experimental import checkify

from jaxembed import data, nn, report, train
from jaxembed.text import corpus, tokenizer
from jaxembed.report import analysis
from jaxembed.config import base_config

np.set_printoptions(precision=4, suppress=True)  # jax arrays print through NumPy
plt.rcParams["figure.dpi"] = 90
fig_dir = pathlib.Path(tempfile.mkdtemp(prefix="jaxembed-figures-"))  # report PNGs go here

print(f"JAX {jax.__version__} on {jax.default_backend()}: {jax.devices()}")

# %% [markdown]
# Now the text: Project Gutenberg's eBook #1513, *Romeo and Juliet*. `load_text`
# downloads it once and caches it. **Offline?** Set the environment variable
# `JAXEMBED_CORPUS=/path/to/pg1513.txt` before this cell, or call
# `corpus.load_text("path/to/pg1513.txt")` with your copy.

# %%
text = corpus.load_text("romeo-juliet")
print(f"Loaded {len(text):,} characters. The first line: {text.splitlines()[0]!r}")

# %% [markdown]
# ## Part 1: Token embeddings, a toy example
#
# A token embedding is a lookup table: one row per token id, one learned vector per row.
# Looking up id 2 returns row 2. Training nudges the rows so that tokens used alike end
# up with similar vectors; before training they are random.
#
# Let's make a toy vocabulary of 6 tokens, each mapped to a 3-dimensional vector, and a
# sequence of 4 token ids to look up.

# %%
ids_L = jnp.array([2, 3, 5, 1])  # a sequence of L = 4 token ids

toy_vocab_size = 6  # token ids 0..5
toy_embedding_dim = 3  # each token becomes a 3-d vector

toy_embedding = nn.TokenEmbedding(vocab_size=toy_vocab_size, features=toy_embedding_dim)
print(f"Embedding layer: {toy_vocab_size} tokens -> {toy_embedding_dim}-d vectors")

# %% [markdown]
# **JAX difference: explicit random keys.** PyTorch draws from a hidden global random
# state (`torch.manual_seed`), so the numbers depend on which cells ran before. JAX has
# no global state: every random draw takes a **key**, and the same key always gives the
# same numbers. We make one root key and split it into independent keys, one per table.
#
# **JAX difference: parameters live outside the module.** A Flax module is only a
# description. `init(key, example_ids)` creates its parameters and returns them as a
# nested dict (a *pytree*) that we hold and pass in explicitly.

# %%
root_key = jax.random.key(0)
toy_key, token_key, position_key = jax.random.split(root_key, 3)

toy_params = toy_embedding.init(toy_key, ids_L)
print("Parameter shapes:", jax.tree.map(jnp.shape, toy_params))

toy_table_VxD = toy_params["params"]["embedding"]  # V = 6 rows, D = 3 columns
print("\nEmbedding weight table (6 tokens x 3 dimensions), one row per token id:")
print(toy_table_VxD)

# %% [markdown]
# To run the layer, `apply` takes the parameters and the ids. Let's embed the single
# token id 2. (The PyTorch original said "token ID 3" here but looked up 2, and its
# printed vector did not match its printed table because its cells had run out of
# order. Here the lookup can be checked against the table.)

# %%
single_1xD = toy_embedding.apply(toy_params, jnp.array([2]))
print("Embedding of token id 2:", single_1xD)
print("It is row 2 of the table:", bool(jnp.array_equal(single_1xD[0], toy_table_VxD[2])))

again = toy_embedding.init(toy_key, ids_L)  # same key -> same table, whatever ran before
print("Re-initialising with the same key gives the same table:", bool(jnp.array_equal(again["params"]["embedding"], toy_table_VxD)))

# %% [markdown]
# A whole sequence works the same way: each id is replaced by its row, so 4 ids become
# a 4 x 3 array. Looking rows up is the same as multiplying one-hot vectors by the
# table, just much cheaper.

# %%
toy_embeddings_LxD = toy_embedding.apply(toy_params, ids_L)
print("Embeddings for the sequence [2, 3, 5, 1]:")
print(toy_embeddings_LxD)
print(f"\nShape: {toy_embeddings_LxD.shape} -> (sequence_length=4, embedding_dim=3)")
print("Rows 2, 3, 5, 1 of the table:", bool(jnp.array_equal(toy_embeddings_LxD, toy_table_VxD[ids_L])))

one_hot_LxV = jax.nn.one_hot(ids_L, toy_vocab_size)
print("Same as one_hot(ids) @ table:", bool(jnp.allclose(one_hot_LxV @ toy_table_VxD, toy_embeddings_LxD)))

# %% [markdown]
# ### Three more things JAX does differently
#
# **`jax.jit` compiles.** Wrapping a function in `jax.jit` traces it once for each input
# shape and compiles it with XLA for the CPU, GPU or TPU at hand; later calls run the
# compiled code. Because the parameters are an ordinary argument, `apply` itself is the
# function to compile.

# %%
embed_fn = jax.jit(toy_embedding.apply)
print("Compiled lookup equals the eager one:", bool(jnp.array_equal(embed_fn(toy_params, ids_L), toy_embeddings_LxD)))

# %% [markdown]
# **Arrays are immutable.** You cannot assign into a JAX array; `.at[...].set(...)`
# returns a changed copy instead (inside `jit`, XLA turns that into an in-place update
# when it safely can). It is also why training never edits parameters in place: each
# optimiser step returns new ones.

# %%
try:
    toy_table_VxD[2] = 0.0
except TypeError as error:
    print("TypeError:", str(error).split(".")[0] + ".")

zeroed_VxD = toy_table_VxD.at[2].set(0.0)  # a new array
print("New array, row 2:     ", zeroed_VxD[2])
print("Original still, row 2:", toy_table_VxD[2])

# %% [markdown]
# **An out-of-range id gives NaN, not an error.** Our vocabulary is 0..5, so id 6 does
# not exist. PyTorch raises `IndexError`; compiled JAX code cannot raise from inside the
# computation, so the lookup returns a row of NaN (as Flax's own `nn.Embed` does), which
# would quietly spread into everything computed from it. Plain JAX indexing is worse:
# it clamps the id and silently returns the last row.

# %%
bad_ids_L = jnp.array([2, 6])
print(toy_embedding.apply(toy_params, bad_ids_L))
print("Plain indexing, table[6], gives row 5:", toy_table_VxD[6])

# %% [markdown]
# When ids come from outside, check them. `nn.check_ids` raises at once on
# concrete arrays...

# %%
try:
    nn.check_ids(bad_ids_L, toy_vocab_size)
except ValueError as error:
    print("ValueError:", error)


# %% [markdown]
# ...and inside `jit` it records a check with
# [`checkify`](https://docs.jax.dev/en/latest/debugging/checkify_guide.html): the
# compiled function returns an error value next to its result, and `err.throw()`
# raises it in Python.

# %%
def checked_lookup(params, ids):
    nn.check_ids(ids, toy_vocab_size)
    return toy_embedding.apply(params, ids)


checked_lookup_fn = jax.jit(checkify.checkify(checked_lookup))

err, _ = checked_lookup_fn(toy_params, ids_L)
print("Good ids, error:", err.get())
err, _ = checked_lookup_fn(toy_params, bad_ids_L)
try:
    err.throw()
except checkify.JaxRuntimeError as error:
    print("JaxRuntimeError:", error)

# %% [markdown]
# ## Part 2: GPT-2 scale token embeddings
#
# Now the real vocabulary. GPT-2's byte-pair tokenizer has **50,257 tokens**. GPT-2
# small embeds each in 768 dimensions; we use **256**, as the original notebook did.
# (`jaxembed.text.tokenizer` builds the same encoding as `tiktoken.get_encoding("gpt2")`
# from local files, so it needs no network.)

# %%
gpt2_tokenizer = tokenizer.get_encoding("gpt2")
print(f"GPT-2 vocabulary size: {gpt2_tokenizer.n_vocab:,}")
# Newer tokenizers work too (downloaded by tiktoken), e.g. GPT-4o's:
# tokenizer.get_encoding("o200k_base")

# %% [markdown]
# The table is the same kind of layer, just bigger: one 256-d row for each of the
# 50,257 tokens. Counting parameters means summing the sizes of the pytree's leaves.

# %%
GPT2_VOCAB_SIZE = gpt2_tokenizer.n_vocab  # 50,257
GPT2_EMBEDDING_DIM = 256  # GPT-2 small uses 768; 256 for this tutorial

token_embedding = nn.TokenEmbedding(vocab_size=GPT2_VOCAB_SIZE, features=GPT2_EMBEDDING_DIM)
token_params = token_embedding.init(token_key, jnp.zeros((1,), jnp.int32))

num_params = sum(leaf.size for leaf in jax.tree.leaves(token_params))
print(f"Token embedding layer: {GPT2_VOCAB_SIZE:,} tokens -> {GPT2_EMBEDDING_DIM}-d vectors")
print(f"Total parameters: {num_params:,} = {GPT2_VOCAB_SIZE:,} x {GPT2_EMBEDDING_DIM} "
      f"({num_params * 4 / 2**20:.1f} MiB as float32)")

# %% [markdown]
# ### Create a data batch
#
# The loader tokenizes the text and cuts the token stream into windows of
# `CONTEXT_LENGTH = 4` tokens. With `stride = 4` consecutive windows neither overlap
# nor leave gaps, and without shuffling the first batch is simply the first
# 8 x 4 = 32 tokens of the file. Batches are NumPy `int32` arrays, ready for JAX.

# %%
CONTEXT_LENGTH = 4  # tokens per sequence, L
BATCH_SIZE = 8  # sequences per batch, B

dataloader = data.create_dataloader(
    text,
    batch_size=BATCH_SIZE,
    max_length=CONTEXT_LENGTH,
    stride=CONTEXT_LENGTH,  # no overlap between sequences
    shuffle=False,
)
inputs_BxL, targets_BxL = next(iter(dataloader))
print(f"Batch shape: {inputs_BxL.shape} -> (batch_size={BATCH_SIZE}, sequence_length={CONTEXT_LENGTH}), dtype {inputs_BxL.dtype}")

# %% [markdown]
# The token ids, and what they say. Decoding each id separately shows how GPT-2 splits
# the text: most tokens carry their leading space (`' Project'`), and runs of spaces and
# newlines are tokens too.

# %%
print("Token IDs:\n", inputs_BxL)
print()
for row_L in inputs_BxL.tolist():
    pieces = " ".join(repr(gpt2_tokenizer.decode([token_id])) for token_id in row_L)
    print(f"{str(row_L):<28} -> {pieces}")
print("\nThe batch, read row after row:", repr(gpt2_tokenizer.decode(inputs_BxL.ravel().tolist())))

# %% [markdown]
# These are the original notebook's ids except one: the fourth row ends with 46566 (`' eBook'`)
# where the original had 47179 (`' ebook'`), because this revision of the Gutenberg
# file spells it "This eBook".
#
# The loader also returns **targets**: the same windows shifted one token to the left,
# i.e. the token that comes next at every position. We'll need them in Part 5.

# %%
print("inputs[0] :", inputs_BxL[0])
print("targets[0]:", targets_BxL[0], "<- the next token at each position")

# %% [markdown]
# ### Convert token ids to token embeddings
#
# Each of the 8 x 4 ids becomes a 256-d vector. The layer does not care about the
# shape of its input: ids of shape `[B, L]` give vectors of shape `[B, L, D]`.

# %%
token_embeddings_BxLxD = jax.jit(token_embedding.apply)(token_params, inputs_BxL)

print(f"Token embeddings shape: {token_embeddings_BxLxD.shape}")
print(f"  -> (batch_size={BATCH_SIZE}, sequence_length={CONTEXT_LENGTH}, embedding_dim={GPT2_EMBEDDING_DIM})")
print(f"\nEach of the {BATCH_SIZE} sequences has {CONTEXT_LENGTH} tokens,")
print(f"and each token is now a {GPT2_EMBEDDING_DIM}-dimensional vector.")

# %% [markdown]
# ## Part 3: Positional embeddings
#
# **Problem: token embeddings alone carry no word order.** A token gets the same vector
# wherever it stands, so "dog bites man" and "man bites dog" become the same three
# vectors, just reordered.

# %%
dog_bites_man_L = jnp.array(gpt2_tokenizer.encode(" dog bites man"))
man_bites_dog_L = jnp.array(gpt2_tokenizer.encode(" man bites dog"))
print("' dog bites man' ->", dog_bites_man_L, "   ' man bites dog' ->", man_bites_dog_L)

dog_tok_LxD = token_embedding.apply(token_params, dog_bites_man_L)
man_tok_LxD = token_embedding.apply(token_params, man_bites_dog_L)
print("Same vectors, reversed order:", bool(jnp.array_equal(dog_tok_LxD, man_tok_LxD[::-1])))

# %% [markdown]
# **Solution: add a learned vector for each position.** Position 0, 1, 2, 3 each get a
# row of a second table, with one row per position the model can handle. Calling the
# layer with a length `L` returns rows `0..L-1`. The length is a plain Python `int`, not
# an array: in JAX, array shapes are fixed when a function is compiled.

# %%
pos_embedding = nn.PositionalEmbedding(max_length=CONTEXT_LENGTH, features=GPT2_EMBEDDING_DIM)
pos_params = pos_embedding.init(position_key, CONTEXT_LENGTH)
print(f"Positional embedding layer: {CONTEXT_LENGTH} positions -> {GPT2_EMBEDDING_DIM}-d vectors")
print(f"This means we can handle sequences up to {CONTEXT_LENGTH} tokens long")

pos_embeddings_LxD = pos_embedding.apply(pos_params, CONTEXT_LENGTH)
print(f"\nPositional embeddings shape: {pos_embeddings_LxD.shape} -> (sequence_length={CONTEXT_LENGTH}, embedding_dim={GPT2_EMBEDDING_DIM})")
print("Rows 0..3 of the table:", bool(jnp.array_equal(pos_embeddings_LxD, pos_params["params"]["embedding"][jnp.arange(CONTEXT_LENGTH)])))

# %% [markdown]
# With positions added, " dog" at the start of a sentence and " dog" at the end are no
# longer the same vector, so word order survives.

# %%
pos_3xD = pos_embedding.apply(pos_params, 3)  # the sentences are 3 tokens long
dog_first_D, dog_last_D = dog_tok_LxD[0], man_tok_LxD[2]  # ' dog' at position 0 and at position 2
print("' dog' at positions 0 and 2, token embedding only: same vector?", bool(jnp.array_equal(dog_first_D, dog_last_D)))
print("' dog' at positions 0 and 2, plus positions:       same vector?",
      bool(jnp.array_equal(dog_first_D + pos_3xD[0], dog_last_D + pos_3xD[2])))

# %% [markdown]
# ## Part 4: Combining token and positional embeddings
#
# The input embeddings are token embeddings plus positional embeddings.
#
# **Broadcasting** (the same rules as NumPy and PyTorch):
# - `token_embeddings_BxLxD`: shape `[8, 4, 256]` (batch, sequence, embedding)
# - `pos_embeddings_LxD`: shape `[4, 256]` (sequence, embedding)
# - shapes are aligned from the right, so `[4, 256]` acts as `[1, 4, 256]` and is
#   repeated across the batch
# - result: shape `[8, 4, 256]`
#
# Every sequence in the batch gets the same positional vectors added to it.

# %%
input_embeddings_BxLxD = token_embeddings_BxLxD + pos_embeddings_LxD

print(f"Token embeddings shape:      {token_embeddings_BxLxD.shape}")
print(f"Positional embeddings shape: {pos_embeddings_LxD.shape}")
print(f"Input embeddings shape:      {input_embeddings_BxLxD.shape}")
same_positions = jnp.allclose(input_embeddings_BxLxD - token_embeddings_BxLxD, pos_embeddings_LxD[None], atol=1e-6)
print("Every sequence got the same positional vectors:", bool(same_positions))

# %% [markdown]
# `nn.InputEmbedding` packages both tables and the sum in one layer. Because
# parameters are just a pytree, we don't even need to initialise it: we can hand it the
# two tables from Parts 2 and 3, arranged the way its `init` would arrange them
# (`jax.eval_shape` shows that structure without allocating anything). Same tables in,
# same numbers out.

# %%
input_embedding = nn.InputEmbedding(
    vocab_size=GPT2_VOCAB_SIZE, max_length=CONTEXT_LENGTH, features=GPT2_EMBEDDING_DIM
)
input_params = {"params": {"token": token_params["params"], "position": pos_params["params"]}}

expected = jax.eval_shape(input_embedding.init, root_key, inputs_BxL)
print("Parameter structure InputEmbedding expects:", jax.tree.map(lambda leaf: leaf.shape, expected))
print("Ours matches:", jax.tree.structure(expected) == jax.tree.structure(input_params))

h_BxLxD = jax.jit(input_embedding.apply)(input_params, inputs_BxL)
print(f"\nInputEmbedding output shape: {h_BxLxD.shape}")
print("Equals token + positional computed by hand:", bool(jnp.array_equal(h_BxLxD, input_embeddings_BxLxD)))

# %% [markdown]
# ## Part 5: Training the embeddings
#
# Everything so far was random. To see embeddings *learn*, `jaxembed` trains the
# smallest model in which both tables get a gradient: `model.EmbeddingLM` computes
# `h = token(ids) + position(L)` exactly as in Part 4 and predicts the **next token**
# from `h` alone, scoring every vocabulary entry with the token table itself
# (`logits = h @ token_table.T`, a *tied* output head). There is no attention, so each
# position sees only its own token and position.
#
# The loss is cross-entropy in nats. A model that guesses uniformly among 50,257 tokens
# scores ln 50,257 = 10.82, and small random tables start there.
#
# We use the tiny settings of `configs/tiny.py`: 32-d tables, windows of 16 tokens,
# 16 windows per step, AdamW at a peak learning rate of 0.02, 300 steps.

# %%
config = base_config()  # every field is documented in jaxembed/config.py
config.data.max_length = 16  # context length L
config.data.stride = 16  # windows don't overlap
config.data.batch_size = 16  # 16 x 16 = 256 tokens per step
config.model.features = 32  # embedding width D
config.model.num_layers = 0  # no attention: the embeddings alone (Part 6 adds one layer)
config.optim.learning_rate = 2e-2  # peak, after a linear warmup...
config.optim.warmup_steps = 20  # ...of 20 steps, then cosine decay
config.train.steps = 300
config.train.log_every = 10  # a training-loss row every 10 steps
config.train.eval_every = 50  # a validation loss every 50 steps
config.train.eval_batches = 8  # 8 x 16 x 16 = 2,048 held-out tokens

print(f"D={config.model.features}, L={config.data.max_length}, batch={config.data.batch_size}, "
      f"lr={config.optim.learning_rate}, steps={config.train.steps}")

# %% [markdown]
# `train.train_and_evaluate` does the whole job: it cuts the Gutenberg header and licence
# away, tokenizes the play, holds out its last 10% for validation, and runs a
# `jax.jit`-compiled optax step (gradient of the loss, AdamW update, new parameters)
# 300 times. `workdir=None` keeps everything in memory (no checkpoints). It returns the
# final state, the logged metrics, and the parameters from before training. About 15 s
# on a 2-core CPU, more the first time (compiling). `train.enable_compilation_cache()` keeps the compiled
# programs on disk (in `~/.cache/jaxembed/xla`; `JAXEMBED_COMPILATION_CACHE=off` turns
# it off), so running the cell again skips compiling.

# %%
train.enable_compilation_cache()  # a re-run of this cell loads its compiled programs from disk
start = time.perf_counter()
result = train.train_and_evaluate(config, workdir=None, text=text, progress=False)
elapsed = time.perf_counter() - start

V = result.splits.vocab_size
print(f"Trained {config.train.steps} steps on {len(result.splits.train_ids):,} tokens "
      f"in {elapsed:.0f} s ({jax.default_backend()}); {len(result.splits.val_ids):,} tokens held out.")
val_losses = [(row["step"], row["val_loss"]) for row in result.metrics if "val_loss" in row]
for step, loss in val_losses:
    print(f"  step {step:>3}: validation loss {loss:.3f}")
print(f"Validation loss: {val_losses[0][1]:.3f} -> {val_losses[-1][1]:.3f} "
      f"(uniform guess: ln {V:,} = {np.log(V):.3f})")

# %% [markdown]
# ### The loss curve
#
# Both losses fall fast from the uniform guess. The validation loss levels off after
# about 150 steps: without attention each prediction sees one token and its position,
# and this model has learned most of what it can. The training loss goes on falling
# below it; that gap is what the model fits of its own 41,000 training tokens that does
# not carry over to held-out text. The validation loss never rises, so this is not yet
# overfitting, and it is enough for our purpose, which is to look inside the tables.

# %%
display(Image(filename=report.plot_loss_curves(result.metrics, fig_dir / "loss.png", vocab_size=V), width=560))


# %% [markdown]
# ### Nearest neighbours, before and after
#
# Which tokens sit closest to a given token, by cosine similarity? We pull both tables
# off the device as NumPy arrays, before and after training, and ask for four probe
# words, each a single GPT-2 token. Only tokens seen at least 3 times in the training
# text are candidates. The other rows move too, but only because the model learns never
# to predict their tokens: they are all pushed the same way, so their position says
# nothing about the token.

# %%
# The trained token table has 50,304 rows, padded to a multiple of 128 so it shards
# evenly over devices; vocab_size=V drops the padding rows.
before_VxD, pos_before_LxD = nn.embedding_tables(result.initial_params, vocab_size=V)
after_VxD, pos_after_LxD = nn.embedding_tables(result.state.params, vocab_size=V)

probe_words = [" Romeo", " thou", " love", " night"]
probe_ids = analysis.resolve_tokens(gpt2_tokenizer, probe_words)  # raises unless each is one token
counts_V = result.token_counts()
candidate_ids = analysis.neighbor_candidates(counts_V)  # tokens seen at least 3 times
print(f"Probe ids: {dict(zip(probe_words, probe_ids))}; {len(candidate_ids):,} candidate tokens")

# %% [markdown]
# One catch before ranking. Compare the cosine of random pairs of candidate tokens,
# before and after training:

# %%
for name, table_VxD in [("before", before_VxD), ("after", after_VxD)]:
    raw_mean, raw_std = analysis.random_pair_cosine(table_VxD, candidate_ids)
    centred_mean, centred_std = analysis.random_pair_cosine(table_VxD, candidate_ids, centre=True)
    print(f"Random pairs {name} training: raw cosine {raw_mean:+.2f} ± {raw_std:.2f}, "
          f"centred {centred_mean:+.2f} ± {centred_std:.2f}")

# %% [markdown]
# After training, two random tokens have a high raw cosine: training moved every vector
# towards one shared direction, so by raw cosine every token looks like every other, and
# the top of a raw ranking says more about that direction than about the token. So we
# subtract the mean vector of the candidates first, the *centred* cosine: random pairs
# then sit near 0 and what is left is specific to each token. This is the rule the run
# report and `jaxembed neighbors` use (`analysis.rank_neighbors`).

# %%
neighbors_before = analysis.rank_neighbors(before_VxD, counts_V, probe_ids, k=5)
neighbors_after = analysis.rank_neighbors(after_VxD, counts_V, probe_ids, k=5)
print("Before training (centred cosine):\n" + analysis.format_neighbors(gpt2_tokenizer, probe_ids, neighbors_before))
print("\nAfter training (centred cosine):\n" + analysis.format_neighbors(gpt2_tokenizer, probe_ids, neighbors_after))

# %%
neighbors_png = report.plot_neighbors(gpt2_tokenizer, neighbors_before, neighbors_after, probe_ids,
                                      fig_dir / "neighbors.png", counts_V=counts_V)
display(Image(filename=neighbors_png, width=640))

# %% [markdown]
# Before training the neighbours are noise: with 1,494 random candidates in 32
# dimensions, the best five of them always reach a centred cosine near 0.5. After 300
# steps they have structure: `' thou'` sits next to `' art'`, `' hast'` and `'ilt'` (as in
# "wilt"), `' Romeo'` next to other characters of the play, `' Nurse'` and `' Paris'`, and
# `' love'` next to `' death'`, but only just: `' let'`, `' my'` and `' by'` come a hundredth
# behind, so read `' love'`'s row as "a word of the dialogue", not as a theme of the play.
# After so little training a word's closest neighbours are often just frequent words;
# compare each neighbour's cosine with the next before reading meaning into one. Why
# do neighbours form at all? The output head reuses the token table, so to
# predict "art" after "thou" the model must make the dot product of their two vectors
# large, which points them the same way. Tokens that follow each other, or follow the
# same tokens, end up close.
#
# How close is close? The random-pair line above is the yardstick: after training, the
# centred cosine of two random candidates is about 0 with a standard deviation of about
# 0.3, so the neighbours at 0.8-0.96 stand two to three standard deviations above chance.

# %% [markdown]
# ### A map of the vocabulary
#
# 32 dimensions don't fit on a page, so we project the 100 most frequent tokens onto
# their two principal components, the two directions along which these vectors vary
# most.

# %%
frequent_ids = analysis.most_frequent(counts_V, 100)
pca_png = report.plot_pca(gpt2_tokenizer, after_VxD, frequent_ids, fig_dir / "pca.png",
                          title="Token embeddings after training (PCA)")
display(Image(filename=pca_png, width=600))

# %% [markdown]
# The first component separates two kinds of token. On the left are fragments of the
# speakers' names, which the play prints in capitals before each speech: GPT-2 splits
# `ROMEO` into `'ROM'` + `'EO'` and `NURSE` into `'N'` + `'UR'` + `'SE'`, and these
# fragments predict one another, so they cluster. On the right are the ordinary
# lower-case words of the dialogue. The two byte-pieces of the curly apostrophe
# (shown as `⟨e2 80⟩` and `⟨99⟩`: GPT-2 splits the character's UTF-8 bytes across two
# tokens) sit beside `'s'` and `'d'`, which follow it in "’s" and "’d".

# %% [markdown]
# ### What the positional table learned
#
# The cosine similarity between every pair of position vectors: before training (left)
# they are random, nearly orthogonal; after training (right) they are nearly identical.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, pos_LxD, title in [(axes[0], pos_before_LxD, "before training"), (axes[1], pos_after_LxD, "after training")]:
    image = ax.imshow(analysis.position_similarity(pos_LxD), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set(title=title, xlabel="position", ylabel="position")
fig.suptitle("Cosine similarity between positional embeddings")
fig.colorbar(image, ax=axes, label="cosine similarity")
plt.show()

# %% [markdown]
# The positional table learned one shared vector, and what it encodes is a *prior*: scored
# against the token table, the average position vector favours the play's most frequent
# tokens. Nothing position-specific was learned, and nothing could be: windows start at
# arbitrary points in the text, so position 5 of a window says nothing about the next
# token, and this model cannot look at the other tokens. Order becomes useful once
# layers mix tokens, which is the job of attention: Part 6.

# %%
prior_logits_V = after_VxD @ pos_after_LxD.mean(axis=0)
top_ids = np.argsort(-prior_logits_V)[:10]
print("Tokens the average position vector favours most:", ", ".join(analysis.token_label(gpt2_tokenizer, i) for i in top_ids))
seen = counts_V > 0
correlation = np.corrcoef(prior_logits_V[seen], np.log(counts_V[seen]))[0, 1]
print(f"Correlation of its scores with log token frequency (tokens in the play): {correlation:.2f}")

# %% [markdown]
# ### Try this
#
# Edit a cell above and rerun it and the cells after it.
#
# 1. **Other probes.** Set `probe_words = [" Juliet", " death", " sweet"]` in the
#    neighbours cell. Expect neighbours that can stand in the same place in a sentence
#    (names beside names, nouns beside nouns). A word that never occurs in the play (try
#    `" computer"`) gets no neighbours: `rank_neighbors` returns an empty list for it,
#    because its row was never an input.
# 2. **Fewer steps.** Set `config.train.steps = 100` in the settings cell. Expect a
#    validation loss that ends higher than after 300 steps, and neighbours closer to the
#    noise of "before training".
# 3. **A narrower table.** Set `config.model.features = 8`. Expect a higher final loss:
#    8 numbers per token leave less room to tell tokens apart.

# %% [markdown]
# ## Part 6: One attention layer, and the positions learn
#
# Now let each position look at the tokens before it. `model.num_layers = 1` adds one
# pre-LayerNorm causal self-attention block (`flax.linen.MultiHeadDotProductAttention`
# with 4 heads and a causal `jax.nn.dot_product_attention`) between the input embeddings and the tied
# head: `h = h + Attention(LayerNorm(h))`. Attention scores one token's query against
# the keys of the tokens before it, and the queries and keys include the positional
# vectors, so *where* a token sits can now change the prediction. Same data, same
# settings, same 300 steps.

# %%
config.model.num_layers, config.model.num_heads = 1, 4
start = time.perf_counter()
attention_result = train.train_and_evaluate(config, workdir=None, text=text, progress=False)
print(f"Trained in {time.perf_counter() - start:.0f} s.")
attention_val = [row["val_loss"] for row in attention_result.metrics if "val_loss" in row]
print(f"Validation loss with attention: {attention_val[0]:.3f} -> {attention_val[-1]:.3f} "
      f"(embeddings only: {val_losses[-1][1]:.3f})")

# %% [markdown]
# ### The loss, as text
#
# What does that fall in the loss look like? Let the model write. Both the
# untrained and the trained parameters continue the same prompt, the first 4 tokens of
# the held-out text, with 30 tokens sampled with the same seed (`nn.generate`: each new
# token is drawn from the model's prediction after the tokens so far, at temperature 0.8
# among the 40 most likely). Both runs share one compiled sampling step: same model,
# same shapes, other parameters.

# %%
prompt_ids = np.asarray(attention_result.splits.val_ids[:4])
sampling = dict(temperature=0.8, top_k=40, seed=config.seed)
print(f"Prompt (the first 4 held-out tokens): {gpt2_tokenizer.decode(prompt_ids.tolist())!r}")
samples = {}
for name, params, loss in [("before", attention_result.initial_params, attention_val[0]),
                           ("after", attention_result.state.params, attention_val[-1])]:
    sample_ids = nn.generate(attention_result.model, params, prompt_ids, 30, **sampling)
    samples[name] = gpt2_tokenizer.decode([*prompt_ids.tolist(), *sample_ids.tolist()])
    print(f"\n--- {name} training (validation loss {loss:.3f}) ---\n{samples[name]}")

# %% [markdown]
# Before training every token is about equally likely, so the sample is word salad
# drawn from all 50,257 tokens: modern words, names and fragments that never occur in
# the play. After 300 steps the model writes in the play's shape: speakers' names in
# capitals on lines of their own, line breaks, commas, and the short words of the
# dialogue. It is not yet sense: at the loss printed above the model still chooses among
# many plausible next tokens at every step, and it sees at most 16 tokens back.

# %% [markdown]
# Two numbers say whether the positional table learned something. **Locality**: the mean
# cosine between adjacent positions minus the mean cosine between positions at least
# L/2 apart (0 for a table with no order in it). **The shuffled-positions gap**: the
# validation loss after permuting the trained positional rows at random, minus the
# ordinary validation loss; it is how much the model relies on position.

# %%
_, attention_pos_LxD = nn.embedding_tables(attention_result.state.params, vocab_size=V)
for name, res, pos_LxD in [("embeddings only", result, pos_after_LxD), ("one attention layer", attention_result, attention_pos_LxD)]:
    final = [row["val_loss"] for row in res.metrics if "val_loss" in row][-1]
    print(f"{name:>20}: locality {analysis.position_locality(pos_LxD):+.3f}, "
          f"shuffled-positions gap {res.val_loss_positions_shuffled - final:+.3f} nats")

# %%
display(Image(filename=report.plot_position_similarity(attention_pos_LxD, fig_dir / "positions.png", before_LxD=pos_before_LxD), width=720))
display(Image(filename=report.plot_position_pca(attention_pos_LxD, fig_dir / "positions_pca.png", before_LxD=pos_before_LxD), width=720))

# %% [markdown]
# With attention the similarity map has a band along its diagonal: neighbouring
# positions get similar vectors and distant ones dissimilar vectors, so the table now
# encodes *distance*. Its first two principal components, joined in position order,
# trace a path instead of a scribble. Embeddings only, the gap and the locality are
# about zero; with one attention layer both are clearly positive. This is what the
# learned positional embeddings of GPT-2 do, at 1,024 positions and 768 dimensions.

# %% [markdown]
# ### Try this
#
# 1. **Longer windows.** Set `config.data.max_length = config.data.stride = 32` before
#    the training cell of this part. Expect 32 x 32 similarity maps with the band still
#    along the diagonal, and a locality that stays clearly above 0.
# 2. **Two layers.** Set `config.model.num_layers = 2`. Expect a validation loss at or
#    a little below one layer's, and a positive shuffled-positions gap: position matters
#    as soon as any layer mixes tokens.
# 3. **Back to no attention.** `config.model.num_layers = 0` gives Part 5's model again:
#    locality and gap fall back to about 0.

# %% [markdown]
# ## Part 7: Other ways to encode position, and what happens past the trained length
#
# A learned table has one row per position and nothing beyond: this model knows 16
# positions, as the seed's knew 4. Other schemes tell the model where a token sits
# differently (`config.model.position`, `jaxembed.nn.positions`):
#
# - **sinusoidal** (Vaswani et al. 2017): a fixed sin/cos table added to the token
#   vectors. Nothing is trained; any position has a row.
# - **rope** (rotary, Su et al. 2021): nothing is added to the input; inside attention
#   each query and key is turned by an angle proportional to its position, so their
#   score depends only on how far apart they are.
# - **alibi** (Press et al. 2022): nothing is added either; each head subtracts a
#   penalty proportional to the query-key distance from its attention scores.
# - **none**: no positional signal at all, only the causal mask.
#
# Same data, seed and 300 steps for each (Part 6's run is the learned one). Each model is
# then evaluated on held-out windows of 16 tokens, as trained, and of 32 and 64.

# %%
by_scheme = {"learned": attention_result}
for position in ("sinusoidal", "rope", "alibi", "none"):
    config.model.position = position
    start = time.perf_counter()
    by_scheme[position] = train.train_and_evaluate(config, workdir=None, text=text, progress=False)
    print(f"{position:>10}: trained in {time.perf_counter() - start:.0f} s")
config.model.position = "learned"
L = config.data.max_length  # the trained length (16 unless Part 6's "Try this" changed it)
print(f"{'scheme':>10}  " + "  ".join(f"loss @ {n:>2}" for n in (L, 2 * L, 4 * L)))
for position, res in by_scheme.items():
    losses = res.val_loss_by_length
    print(f"{position:>10}  " + "  ".join(f"{losses[n]:>9.3f}" if n in losses else f"{'-':>9}" for n in (L, 2 * L, 4 * L)))

# %%
loss_by_length = {name: res.val_loss_by_length for name, res in by_scheme.items()}
display(Image(filename=report.plot_loss_by_length(loss_by_length, fig_dir / "loss_by_length.png", trained_length=L), width=640))
_, sinusoidal_LxD = by_scheme["sinusoidal"].tables()
display(Image(filename=report.plot_position_maps({"learned (trained)": attention_pos_LxD, "sinusoidal (fixed)": sinusoidal_LxD}, fig_dir / "position_maps.png"), width=720))

# %% [markdown]
# How to read it:
#
# - **The learned table stops at 16.** It is a single point: position 16 has no row, so
#   there is nothing to evaluate (`jaxembed` refuses rather than clamp or return NaN).
#   At 16 it has the lowest loss of all: a trained row per position fits this data best.
# - **ALiBi extrapolates.** Its penalty depends only on distance, and attention already
#   saw every distance up to 15 in training; on longer windows it still works, and its
#   loss stays flat (or falls a little: later tokens have more context).
# - **Sinusoidal and rotary climb.** Their rows and angles exist for any position, but
#   the model never saw positions (sinusoidal) or distances (rotary) past 15 in
#   training, and what it learned does not carry over. Rotary holds at 32 and breaks at
#   64 here.
# - **None learns order anyway.** With no positional signal it is worst at 16, but
#   better than a model without attention (Part 5): the causal mask alone lets a position
#   count how many tokens it can see. Nothing depends on absolute position, so it is flat
#   too.
# - **The tables side by side.** The sinusoidal map is banded by construction, the same
#   for any corpus; the learned map is banded only because training made it so.
#
# `jaxembed compare --workdir runs/positions --text pg1513.txt` runs this comparison from
# the command line (a few minutes on 2 cores) and writes one page with these pictures.

# %% [markdown]
# ## Part 8: What a trained table looks like: GPT-2's positions
#
# Your positional table has 16 rows and trained for 300 steps. GPT-2 small's has 1,024
# rows of 768 numbers, trained on far more text. `nn.gpt2_tables(positions_only=True)`
# fetches just that table from GPT-2's checkpoint on Hugging Face (1,024 x 768 float32
# numbers, 3 MB, by HTTP range requests) once and caches it. It needs a network; without one the cell says
# so and describes what you would see. The copy of this notebook in the repository was
# executed offline, so there it shows that note instead of GPT-2's pictures.

# %%
wpe_path = nn.pretrained.gpt2_cache_paths()["wpe"]  # where the table is cached, or can be placed by hand
# Printed as ~/... so the notebook shows no one's home folder.
shown_path = f"~/{wpe_path.relative_to(pathlib.Path.home())}" if wpe_path.is_relative_to(pathlib.Path.home()) else str(wpe_path)
try:
    _, gpt2_wpe_LxD = nn.gpt2_tables(positions_only=True)  # the token table stays unfetched (None)
    print(f"GPT-2's position table: {gpt2_wpe_LxD.shape[0]:,} positions x {gpt2_wpe_LxD.shape[1]} features")
except nn.PretrainedUnavailableError as error:  # offline: explain in words, on stdout, no traceback
    gpt2_wpe_LxD, gpt2_error = None, error
    print(f"""GPT-2's position table could not be fetched (this copy ran offline; print(gpt2_error) says why),
so this part shows no GPT-2 pictures. With the table you would see:

  - a similarity map with a smooth band along its diagonal, like the one your table
    has after Part 6 but over 1,024 positions: each position is most like its
    neighbours, and the likeness fades gradually with distance;
  - its first principal components tracing a smooth curve through the positions in
    order (the well-known "helix" of GPT-2's positions), where your {len(attention_pos_LxD)} positions
    trace a short path;
  - a locality well above 0, like yours.

To see it: run this cell with a network connection (3 MB, once; later runs read the
cache), or place the table by hand at
  {shown_path}
(one tensor, safetensors.numpy.save_file({{'wpe.weight': array}}, path)), or set
JAXEMBED_GPT2_URL to a mirror or a local copy of GPT-2's model.safetensors and rerun.""")

# %% [markdown]
# Both tables side by side on one colour scale (-1 to 1), and the first two principal
# components of each, points joined in position order. What to compare:
#
# - **The band.** A smooth band along the diagonal means nearby positions have similar
#   vectors. GPT-2's band runs the whole 1,024 positions; your 16-row table after 300
#   steps shows the beginning of the same thing.
# - **The path.** GPT-2's positions, in order, trace a smooth curve (in three components,
#   the well-known helix): position is laid out along a continuous line in the table,
#   which is what lets attention read distance from it. Yours is a short path.
# - **Locality** (Part 6's number): for GPT-2 "far" means at least 512 positions apart,
#   for yours at least 8.

# %%
print(f"Your table (Part 6, {len(attention_pos_LxD)} positions): locality {analysis.position_locality(attention_pos_LxD):+.3f}")
if gpt2_wpe_LxD is None:
    print("GPT-2's table: not available here (see the note above), so no pictures.")
else:
    print(f"GPT-2's table ({len(gpt2_wpe_LxD):,} positions): locality {analysis.position_locality(gpt2_wpe_LxD):+.3f}")
    yours = f"yours (Part 6, {attention_pos_LxD.shape[0]} x {attention_pos_LxD.shape[1]}, 300 steps)"
    tables = {"GPT-2 small (trained, 1,024 x 768)": gpt2_wpe_LxD, yours: attention_pos_LxD}
    display(Image(filename=report.plot_position_maps(tables, fig_dir / "gpt2_position_maps.png"), width=720))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, (name, pos_LxD) in zip(axes, tables.items()):
        points_Lx2, explained_2 = analysis.pca(pos_LxD)
        ax.plot(points_Lx2[:, 0], points_Lx2[:, 1], color="0.7", lw=0.8, zorder=1)
        dots = ax.scatter(points_Lx2[:, 0], points_Lx2[:, 1], c=np.arange(len(pos_LxD)), cmap="viridis",
                          s=6 if len(pos_LxD) > 100 else 30, zorder=2)
        ax.set(title=name, xlabel=f"PC1 ({explained_2[0]:.0%} of variance)", ylabel=f"PC2 ({explained_2[1]:.0%})")
        fig.colorbar(dots, ax=ax, label="position")
    fig.suptitle("Positional tables, first two principal components, in position order")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Summary
#
# **What we learned:**
#
# 1. **Token embeddings** turn discrete token ids into vectors by looking up rows of a
#    table (`TokenEmbedding`); a lookup *is* a table row.
# 2. **Positional embeddings** give each position its own learned vector
#    (`PositionalEmbedding`), so word order survives.
# 3. **Input embeddings** are token + positional, `[B, L, D] + [L, D]` broadcast over the
#    batch (`InputEmbedding`): what the transformer's attention layers receive.
# 4. **Training** shapes them: after 300 steps, tokens that predict each other sit close
#    together. Without attention the positional table learns only a frequency prior; with
#    one causal attention layer it learns distance (a banded similarity map).
# 5. **Other position schemes** trade fit for reach: the learned table fits the trained
#    length best and has nothing beyond it; ALiBi keeps its loss on windows 4x longer;
#    sinusoidal and rotary climb there; with no positions, causal attention still learns
#    some order.
# 6. **A fully trained table** (GPT-2's 1,024 positions) has the same banded map and a
#    smooth path through its positions; your 16-row table shows the start of it.
#
# **Key dimensions for GPT-2:**
# - Vocabulary size: 50,257 tokens
# - Embedding dimension: 256 in this tutorial (GPT-2 small uses 768)
# - Context length: 4 tokens here, 16 when training (GPT-2 uses 1,024)
#
# **JAX, compared with PyTorch:**
#
# | | PyTorch | JAX / Flax |
# | --- | --- | --- |
# | randomness | global seed | explicit keys: `jax.random.key`, `split` |
# | parameters | inside the module | a pytree from `init`, passed to `apply` |
# | speed | eager by default | `jax.jit` compiles with XLA, for CPU, GPU and TPU |
# | updates | in place | immutable arrays: `x.at[i].set(v)`, new params each step |
# | bad token id | `IndexError` | a NaN row; check with `check_ids` (eager or `checkify`) |
#
# To train longer or on other text, use the command line:
# `jaxembed train --workdir runs/rj --text pg1513.txt` (the tiny config, one attention
# layer) writes checkpoints, TensorBoard logs and a `report.md` with these same pictures.
