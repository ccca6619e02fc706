"""The seed notebook's walk-through as a function: text -> ids -> embeddings.

It tokenizes the text as the seed notebook did: a Project Gutenberg header and licence are
kept, so Romeo and Juliet gives the seed's ids (464 4935 20336 46566, 'The Project Gutenberg
eBook'), where ``jaxembed train`` strips them (``strip_gutenberg=True`` does the same here).
``Walkthrough.format`` says which.

Example:
  >>> from jaxembed.walkthrough import walkthrough
  >>> report = walkthrough("to be or not to be, that is the question " * 4)
  >>> report.input_embeddings_shape
  (8, 4, 256)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed import data
from jaxembed.nn import embeddings
from jaxembed.text import corpus, tokenizer


@dataclasses.dataclass(frozen=True)
class Walkthrough:
    """What the seed notebook prints, as values."""

    num_chars: int
    num_tokens: int
    #: What was done with a Project Gutenberg header and licence (``corpus.gutenberg_note``).
    text_note: str
    vocab_size: int
    features: int
    inputs_BxL: np.ndarray
    decoded_rows: list[str]
    token_embeddings_shape: tuple[int, ...]
    positional_embeddings_shape: tuple[int, ...]
    input_embeddings_shape: tuple[int, ...]

    def format(self) -> str:
        """The walk-through as printable text."""
        batch, length = self.inputs_BxL.shape
        lines = [
            f"Corpus: {self.num_chars:,} characters -> {self.num_tokens:,} GPT-2 tokens",
            f"{self.text_note[0].upper()}{self.text_note[1:]}.",
            f"Token embedding table: {self.vocab_size:,} x {self.features} = "
            f"{self.vocab_size * self.features:,} parameters",
            f"\nFirst batch (batch_size={batch}, max_length={length}, stride={length}, no shuffle):",
        ]
        for row, text in zip(self.inputs_BxL.tolist(), self.decoded_rows):
            lines.append(f"  {str(row):<32} -> {text!r}")
        lines += [
            "",
            f"token embeddings      {self.token_embeddings_shape}  (batch, sequence, embedding)",
            f"positional embeddings {self.positional_embeddings_shape}        (sequence, embedding)",
            f"input embeddings      {self.input_embeddings_shape}  = token + positional, broadcast over the batch",
        ]
        return "\n".join(lines)


def walkthrough(
    text: str,
    *,
    batch_size: int = 8,
    max_length: int = 4,
    features: int = 256,
    seed: int = 0,
    strip_gutenberg: bool = False,
) -> Walkthrough:
    """Runs the seed's Parts 2-4 on ``text`` and returns what they show.

    ``strip_gutenberg=True`` cuts a Project Gutenberg header and licence first, as
    ``jaxembed train`` does; the default keeps them, as the seed notebook did.

    Example:
      >>> book = "licence\\n*** START OF IT ***\\n" + "to be or not to be " * 4 + "\\n*** END OF IT ***\\n"
      >>> walkthrough(book, batch_size=2).text_note
      'Project Gutenberg header and licence kept: all 123 characters (77 without them); jaxembed train strips them'
      >>> walkthrough(book, batch_size=2, strip_gutenberg=True).num_chars
      77
    """
    note = corpus.gutenberg_note(text, stripped=strip_gutenberg)
    if corpus.has_gutenberg_markers(text) and not strip_gutenberg:
        note += "; jaxembed train strips them"  # the seed's ids come from the whole file
    if strip_gutenberg:
        text = corpus.strip_gutenberg(text)
    enc = tokenizer.get_encoding("gpt2")
    ids = data.tokenize(text)
    loader = data.create_dataloader(
        ids,
        batch_size=batch_size,
        max_length=max_length,
        stride=max_length,
        shuffle=False,
        drop_last=False,
        shard_index=0,
        shard_count=1,
    )
    inputs_BxL, _ = next(iter(loader))
    embed = embeddings.InputEmbedding(vocab_size=enc.n_vocab, max_length=max_length, features=features)
    params = jax.jit(embed.init)(jax.random.key(seed), jnp.asarray(inputs_BxL))
    shapes = jax.eval_shape(
        lambda p, ids: (
            embed.apply(p, ids, method=lambda m, i: m.token(i)),
            embed.apply(p, method=lambda m: m.position(max_length)),
            embed.apply(p, ids),
        ),
        params,
        jnp.asarray(inputs_BxL),
    )
    return Walkthrough(
        num_chars=len(text),
        num_tokens=len(ids),
        text_note=note,
        vocab_size=enc.n_vocab,
        features=features,
        inputs_BxL=inputs_BxL,
        decoded_rows=[enc.decode(row) for row in inputs_BxL.tolist()],
        token_embeddings_shape=tuple(shapes[0].shape),
        positional_embeddings_shape=tuple(shapes[1].shape),
        input_embeddings_shape=tuple(shapes[2].shape),
    )
