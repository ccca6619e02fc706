"""Batches to logits and loss: embedding modules (Flax linen), the language model, the losses.

The third stage of the data flow (text -> data -> nn -> train -> report). One module per concept:
``embeddings`` (``TokenEmbedding``, ``PositionalEmbedding``, ``InputEmbedding``, ``check_ids``),
``positions`` (the position schemes: sinusoidal, rotary, ALiBi, none, beside the learned table),
``model`` (``EmbeddingLM``: input embeddings, causal attention blocks, a tied head), ``losses``
(``cross_entropy``, the tiled ``tied_cross_entropy``), ``pretrained`` (``gpt2_tables``: GPT-2's
``wte``/``wpe`` fetched by byte range and cached; ``load_tables`` / ``init_from_gpt2`` put them
into params, ``table_init`` starts a module's table from given rows) and
``sampling`` (``generate``, ``sample_text``: text from a model, one compiled step per token).
Nothing here reads a config.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxembed import nn
  >>> embed = nn.InputEmbedding(vocab_size=10, max_length=4, features=3)
  >>> ids_BxL = jnp.array([[1, 2, 3, 4]])
  >>> embed.apply(embed.init(jax.random.key(0), ids_BxL), ids_BxL).shape
  (1, 4, 3)
"""

from jaxembed.nn import embeddings, losses, model, positions, pretrained, sampling
from jaxembed.nn.embeddings import (
    InputEmbedding,
    PositionalEmbedding,
    TokenEmbedding,
    check_ids,
    padded_size,
    torch_embedding_init,
)
from jaxembed.nn.losses import cross_entropy, tied_cross_entropy
from jaxembed.nn.model import LOGICAL_AXES, CausalSelfAttentionBlock, EmbeddingLM, embedding_tables, make_model
from jaxembed.nn.positions import (
    POSITIONS,
    SinusoidalPositionEmbedding,
    alibi_bias,
    alibi_slopes,
    causal_attention,
    rotary_embedding,
    sinusoidal_table,
)
from jaxembed.nn.pretrained import (
    GPT2_URL,
    PretrainedUnavailableError,
    gpt2_download_plan,
    gpt2_source,
    gpt2_tables,
    init_from_gpt2,
    load_tables,
    table_init,
)
from jaxembed.nn.sampling import SamplingStep, generate, sample_text

__all__ = [
    "GPT2_URL",
    "LOGICAL_AXES",
    "POSITIONS",
    "CausalSelfAttentionBlock",
    "EmbeddingLM",
    "InputEmbedding",
    "PositionalEmbedding",
    "PretrainedUnavailableError",
    "SamplingStep",
    "SinusoidalPositionEmbedding",
    "TokenEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "causal_attention",
    "check_ids",
    "cross_entropy",
    "embedding_tables",
    "embeddings",
    "generate",
    "gpt2_download_plan",
    "gpt2_source",
    "gpt2_tables",
    "init_from_gpt2",
    "load_tables",
    "losses",
    "make_model",
    "model",
    "padded_size",
    "positions",
    "pretrained",
    "rotary_embedding",
    "sample_text",
    "sampling",
    "sinusoidal_table",
    "table_init",
    "tied_cross_entropy",
    "torch_embedding_init",
]
