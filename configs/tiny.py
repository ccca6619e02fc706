"""The tiny config: a first run that learns in about 15-19 s on 2 CPU cores (30 s the first time).

32-wide tables, context 16, batch 16, 300 steps, one attention layer, on the offline
`python-docs` corpus unless --corpus/--text says otherwise. Every other field, and what it
means: configs/default.py.

Run: jaxembed train --workdir runs/tiny (tiny is the default; or --config path/to/your_copy.py)
"""

import ml_collections
from jaxembed.configs import default


def get_config() -> ml_collections.ConfigDict:
    """The default config with the fields below changed."""
    c = default.get_config()
    c.data.corpus = "python-docs"  # Needs no network; --text PATH for Romeo and Juliet.
    c.data.max_length = 16  # Short context: small positional table, fast steps.
    c.data.stride = 16  # No overlap between windows.
    c.data.batch_size = 16  # 256 tokens per step.
    c.model.features = 32  # Narrow tables: the dense AdamW update stays cheap on CPU.
    c.optim.learning_rate = 2e-2  # Large enough to move a 32-wide table in 300 steps.
    c.optim.warmup_steps = 20  # Short warmup for a short run.
    c.train.steps = 300  # About 15-19 s on 2 CPU cores, start-up and report included.
    c.train.log_every = 10  # A metrics row every 10 steps.
    c.train.eval_every = 50  # Validation loss every 50 steps.
    c.train.eval_batches = 8  # 8 x 16 x 16 = 2,048 held-out tokens per evaluation.
    c.train.checkpoint_every = 100  # Checkpoints at 100, 200, 300.
    c.report.probe_tokens = (" Romeo", " thou", " love", " the", " return", " function")  # Probes for either corpus.
    c.report.pca_tokens = 100  # Fewer labels on the PCA map.
    c.report.projector_tokens = 1000  # Projector export of the 1,000 most frequent tokens.
    return c
