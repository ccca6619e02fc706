"""The default config: the seed notebook's dimensions (256-wide tables, GPT-2 vocabulary, context 64).

Every field of jaxembed's config, with its meaning and its default: the other named configs start
from this one and change a few fields. Copy this file to change it, and run it by path.

Run: jaxembed train --config default --workdir runs/default (or --config path/to/your_copy.py)
"""

import ml_collections
from ml_collections import config_dict

#: Logical axis names -> mesh axes: the batch over `data`; token-table rows (vocab) and
#: attention heads over `model` (so mesh.model must divide model.num_heads); the rest replicated.
AXIS_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("embed", None),
    ("kv", None),
    ("position", None),
)


def get_config() -> ml_collections.ConfigDict:
    """Romeo and Juliet (downloaded once, or --text), 256-wide, context 64, 1000 steps."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed for initialisation and data order.

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "romeo-juliet"  # Named corpus: romeo-juliet (downloaded once) or python-docs.
    # A UTF-8 file to train on instead (--text), or a directory/glob of them (at most 64 MiB,
    # tokenized in memory; larger corpora: `jaxembed tokenize` and data.tokens).
    c.data.text = config_dict.placeholder(str)
    # A token directory from `jaxembed tokenize` (--tokens): trains on its memory-mapped
    # tokens.npy, never copied; overrides data.corpus, excludes data.text.
    c.data.tokens = config_dict.placeholder(str)
    # A second token directory held out for validation (--val-tokens); else the last
    # data.val_fraction of data.tokens.
    c.data.val_tokens = config_dict.placeholder(str)
    c.data.tokenizer = "gpt2"  # tiktoken encoding; its n_vocab sizes the token table.
    c.data.max_length = 64  # Context length L: tokens per window (rows of the positional table).
    c.data.stride = 64  # Tokens between window starts (= max_length: no overlap).
    c.data.batch_size = 16  # Global batch size (split over processes and the `data` mesh axis).
    c.data.val_fraction = 0.1  # Fraction of the corpus's tokens held out, taken from its end.
    c.data.num_workers = 0  # Grain worker processes (0: batches are gathered in-process).

    c.model = ml_collections.ConfigDict()
    c.model.features = 256  # Embedding width D (GPT-2 small: 768).
    c.model.init_stddev = 0.02  # Both tables start as N(0, init_stddev^2) (GPT-2's choice).
    c.model.dtype = "float32"  # Computation dtype: float32 or bfloat16 (params stay param_dtype).
    c.model.param_dtype = "float32"  # Storage dtype of parameters and optimiser state.
    c.model.vocab_multiple = 128  # Token-table rows are padded to a multiple of this (even sharding).
    # Opt-in speed-up: train only the rows of tokens that occur in the corpus, with the
    # softmax over those K ids (a different model: its loss starts at ln K, not ln 50257).
    # Table, softmax and AdamW shrink from 50,257 to K rows (4,455 for Romeo and Juliet,
    # its header and licence stripped: scripts/readme_figures.py).
    c.model.active_vocab = False
    # Causal self-attention blocks after the input embeddings (0: embeddings only, today's
    # smallest model; then the positional table cannot learn anything position-specific).
    c.model.num_layers = 1
    c.model.num_heads = 4  # Attention heads per block; must divide model.features.
    # How position reaches the model (jaxembed.nn.positions): learned (a trained table, the
    # seed's), sinusoidal (a fixed sin/cos table), rope (rotary queries and keys), alibi (a
    # distance bias on the attention logits) or none. rope and alibi need num_layers >= 1.
    c.model.position = "learned"
    # Where the token and position tables start: none (N(0, init_stddev^2)) or gpt2 (GPT-2 124M's
    # wte and wpe, fetched once by byte range: jaxembed.nn.init_from_gpt2). gpt2 needs
    # model.features=768, data.max_length <= 1024 (learned positions), the gpt2 tokenizer and
    # model.active_vocab=False; other position schemes take the token table only. Read on a
    # fresh start only: a resumed run continues from its checkpoint.
    c.model.init_from = "none"
    # Tokens per tile of the tied head's loss (0: the full [B, L, V] logits at once). Batches
    # of at most this many tokens run the dense program. None (the default): on GPU/TPU 2048
    # (gpt2_small's step then needs 1.4 GiB of temporaries instead of 15.7 GiB: jaxembed plan
    # --config gpt2_small); on CPU twice the table's width for tables wider than 32, else the
    # most tokens whose logits fit 8 MiB (jaxembed.nn.losses.auto_tile_tokens: 512 here, 32 for tiny).
    c.model.loss_tile_tokens = config_dict.placeholder(int)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-2  # Peak learning rate after warmup.
    c.optim.warmup_steps = 50  # Linear warmup from 0 to the peak.
    c.optim.final_lr_fraction = 0.1  # Cosine decay ends at this fraction of the peak.
    c.optim.b1 = 0.9  # Adam beta1.
    c.optim.b2 = 0.99  # Adam beta2.
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay: of matrices only, never biases or norms.
    c.optim.decay_embeddings = True  # Whether the decay also shrinks both embedding tables (nanoGPT: yes).
    c.optim.grad_clip = 1.0  # Global-norm gradient clipping threshold.

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # Total optimiser steps.
    c.train.log_every = 20  # Steps between metrics rows (train loss, lr, tokens/s).
    c.train.eval_every = 100  # Steps between validation losses (and at the end).
    c.train.eval_batches = 16  # Validation batches per evaluation (fixed, in order).
    c.train.checkpoint_every = 200  # Steps between orbax checkpoints (and at the end).
    c.train.keep_checkpoints = 3  # Checkpoints kept; older ones are deleted.
    c.train.tensorboard = True  # TensorBoard event files, report images and projector in the workdir.
    c.train.profile_steps = ""  # "START,STOP": jax.profiler trace of steps [START, STOP) for TensorBoard; "" = off.

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Devices on the data-parallel axis (-1: all remaining).
    c.mesh.model = 1  # Devices the token table's vocabulary axis is split over.
    # Logical axis name of every parameter dimension -> mesh axis (None: replicated); see AXIS_RULES.
    c.mesh.logical_axis_rules = AXIS_RULES

    c.report = ml_collections.ConfigDict()
    c.report.probe_tokens = (
        " Romeo",
        " Juliet",
        " thou",
        " love",
        " night",
        " death",
    )  # Tokens whose neighbours the report shows.
    c.report.num_neighbors = 5  # Neighbours listed per probe token.
    c.report.pca_tokens = 150  # Most frequent tokens drawn on the PCA map.
    c.report.projector_tokens = 2000  # Most frequent tokens exported for the TensorBoard projector.
    return c
