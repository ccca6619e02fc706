"""The seed notebook's PyTorch pipeline, as the benchmarks' reference.

Everything here is what the seed (and the book chapter its ``core.data_loader``
comes from) does, written the way a PyTorch user would write it, with
PyTorch's defaults:

* ``GPTDatasetV1``: the seed's dataset, verbatim: every window
  ``ids[i:i+L]`` / ``ids[i+1:i+L+1]`` for ``i in range(0, len(ids) - L,
  stride)`` is materialised up front as a pair of ``torch.tensor``.
* ``create_dataloader_v1``: ``torch.utils.data.DataLoader(dataset,
  batch_size, shuffle, drop_last, num_workers)``.
* ``InputEmbedding``: ``torch.nn.Embedding`` token + positional tables,
  ``tok(ids) + pos(arange(L))`` (the seed's cells 88-92).
* ``EmbeddingLM``: the same tied next-token model as
  ``jaxembed.nn.model.EmbeddingLM``: ``logits = h @ tok.weight.T`` with
  ``h = tok(ids) + pos(arange(L))``, then ``num_layers`` pre-LayerNorm causal
  attention blocks; ``train_step`` does cross-entropy (eager, or through
  ``torch.compile``: ``make_loss``), global-norm gradient clipping and
  ``torch.optim.AdamW`` on the same warmup + cosine schedule as
  ``jaxembed.train.trainer.make_optimizer``.

Importing this module needs torch (``pip install -e ".[bench]"``); the pure
Python ``reference_windows`` below is importable without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def reference_windows(ids: Sequence[int], max_length: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """The seed's window rule in plain Python (no torch): ``[(input, target), ...]``.

    Example:
      >>> reference_windows(list(range(10)), max_length=4, stride=4)
      [([0, 1, 2, 3], [1, 2, 3, 4]), ([4, 5, 6, 7], [5, 6, 7, 8])]
    """
    ids = list(ids)
    return [(ids[i : i + max_length], ids[i + 1 : i + max_length + 1]) for i in range(0, len(ids) - max_length, stride)]


def _torch():
    import torch  # Deferred so that ``reference_windows`` works without torch.

    return torch


class PreTokenized:
    """A stand-in tokenizer whose ``encode`` returns ids made beforehand.

    Lets the benchmarks hand ``GPTDatasetV1`` the corpus's ids (tokenized once,
    outside the timing) without changing the seed's class.
    """

    def __init__(self, ids: Sequence[int]):
        self.ids = [int(i) for i in ids]

    def encode(self, txt, allowed_special=()):
        return self.ids


def _make_dataset_class():
    torch = _torch()
    from torch.utils.data import Dataset

    class GPTDatasetV1(Dataset):
        """The seed's dataset (Raschka, *Build a Large Language Model*, ch. 2)."""

        def __init__(self, txt, tokenizer, max_length, stride):
            self.input_ids = []
            self.target_ids = []

            # Tokenize the entire text
            token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})

            # Use a sliding window to chunk the book into overlapping sequences of max_length
            for i in range(0, len(token_ids) - max_length, stride):
                input_chunk = token_ids[i : i + max_length]
                target_chunk = token_ids[i + 1 : i + max_length + 1]
                self.input_ids.append(torch.tensor(input_chunk))
                self.target_ids.append(torch.tensor(target_chunk))

        def __len__(self):
            return len(self.input_ids)

        def __getitem__(self, idx):
            return self.input_ids[idx], self.target_ids[idx]

    return GPTDatasetV1


_DATASET_CLASS = None


def GPTDatasetV1(txt, tokenizer, max_length, stride):  # noqa: N802 - the seed's name
    """Builds the seed's ``GPTDatasetV1`` (the class is made on first use)."""
    global _DATASET_CLASS
    if _DATASET_CLASS is None:
        _DATASET_CLASS = _make_dataset_class()
    return _DATASET_CLASS(txt, tokenizer, max_length, stride)


def create_dataloader_v1(
    txt, batch_size=4, max_length=256, stride=128, shuffle=True, drop_last=True, num_workers=0, tokenizer=None
):
    """The seed's ``create_dataloader``; ``tokenizer`` defaults to tiktoken's GPT-2."""
    from torch.utils.data import DataLoader

    if tokenizer is None:
        from jaxembed.text.tokenizer import get_encoding  # identical to tiktoken.get_encoding("gpt2"), offline

        tokenizer = get_encoding("gpt2")
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)


def make_input_embedding(vocab_size: int, max_length: int, features: int):
    """The seed's two ``torch.nn.Embedding`` tables (default N(0, 1) init) and forward."""
    torch = _torch()

    class InputEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token = torch.nn.Embedding(vocab_size, features)
            self.position = torch.nn.Embedding(max_length, features)

        def forward(self, ids_BxL):
            return self.token(ids_BxL) + self.position(torch.arange(ids_BxL.shape[-1]))

    return InputEmbedding()


def make_embedding_lm(
    vocab_size: int, max_length: int, features: int, init_stddev: float = 0.02, num_layers: int = 0, num_heads: int = 1
):
    """``jaxembed.nn.model.EmbeddingLM`` in PyTorch: input embeddings, causal attention blocks, tied head.

    Each block is ``h + Attn(LN(h))`` as ``CausalSelfAttentionBlock``: LayerNorm (eps 1e-5), one
    fused query/key/value ``Linear`` (nanoGPT's ``c_attn``, what a PyTorch user writes), causal
    ``scaled_dot_product_attention`` and an output ``Linear``, all with biases; no MLP, no final norm.
    """
    torch = _torch()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(features, eps=1e-5)
            self.qkv = torch.nn.Linear(features, 3 * features)
            self.out = torch.nn.Linear(features, features)

        def forward(self, h_BxLxD):
            b, length, d = h_BxLxD.shape
            qkv = self.qkv(self.norm(h_BxLxD)).view(b, length, 3, num_heads, d // num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, L, K]
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return h_BxLxD + self.out(a.transpose(1, 2).reshape(b, length, d))

    class EmbeddingLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token = torch.nn.Embedding(vocab_size, features)
            self.position = torch.nn.Embedding(max_length, features)
            torch.nn.init.normal_(self.token.weight, std=init_stddev)
            torch.nn.init.normal_(self.position.weight, std=init_stddev)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(num_layers))

        def forward(self, ids_BxL):
            h_BxLxD = self.token(ids_BxL) + self.position(torch.arange(ids_BxL.shape[-1]))
            for block in self.blocks:
                h_BxLxD = block(h_BxLxD)
            return h_BxLxD @ self.token.weight.T

    return EmbeddingLM()


def make_loss(model, compiled: bool = False):
    """``(inputs_BxL, targets_BxL) -> mean cross-entropy`` of ``model``; ``compiled``: through ``torch.compile``.

    ``torch.compile`` (inductor, C++ on CPU) takes the forward and, through AOTAutograd, the
    backward; the optimizer step stays outside (fused AdamW is already one kernel per tensor).
    """
    torch = _torch()

    def loss_fn(inputs_BxL, targets_BxL):
        logits_BxLxV = model(inputs_BxL)
        return torch.nn.functional.cross_entropy(logits_BxLxV.flatten(0, 1), targets_BxL.flatten())

    return torch.compile(loss_fn) if compiled else loss_fn


def warmup_cosine(step: int, *, peak: float, warmup_steps: int, total_steps: int, end_fraction: float) -> float:
    """``optax.warmup_cosine_decay_schedule`` as ``jaxembed.train.trainer.learning_rate_schedule`` configures it."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps, warmup + 1)
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, decay_steps - warmup) / max(decay_steps - warmup, 1)
    end = peak * end_fraction
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, optim, total_steps: int, fused: bool | None = None):
    """``torch.optim.AdamW`` + ``LambdaLR`` with ``jaxembed``'s optim config.

    ``optim`` is ``jaxembed.config.base_config().optim`` (or any object with
    its fields). ``fused=None`` is PyTorch's default implementation, which is
    what the seed's users get; ``fused=True`` is PyTorch's fastest CPU AdamW.
    """
    torch = _torch()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=optim.learning_rate,  # LambdaLR multiplies it by the schedule's fraction
        betas=(optim.b1, optim.b2),
        eps=1e-8,  # optax.adamw's default
        weight_decay=optim.weight_decay,
        fused=fused,
    )
    fraction = lambda step: warmup_cosine(  # noqa: E731
        step,
        peak=1.0,
        warmup_steps=optim.warmup_steps,
        total_steps=total_steps,
        end_fraction=optim.final_lr_fraction,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, fraction)


def train_step(model, opt, scheduler, inputs_BxL, targets_BxL, grad_clip: float, loss_fn=None):
    """One AdamW step on next-token cross-entropy; returns ``(loss, grad_norm)`` tensors.

    ``loss_fn`` is ``make_loss(model, ...)`` (default: the eager loss).
    """
    torch = _torch()
    opt.zero_grad(set_to_none=True)
    loss = (loss_fn or make_loss(model))(inputs_BxL, targets_BxL)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    scheduler.step()
    return loss.detach(), grad_norm
