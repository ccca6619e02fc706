"""Sampling from a language model: determinism, greedy decoding, top-k, one compilation, errors.

Every reference here applies the model eagerly, step by step, to the sequence of its actual
length (cropped to the last ``max_length`` tokens), never through ``jaxembed.nn.sampling``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.errors import InvalidArgumentError
from jaxembed.nn import EmbeddingLM, SamplingStep, generate, sample_text
from jaxembed.text.tokenizer import get_encoding

VOCAB, L = 50, 8
PROMPT = [3, 1, 4]
HOT = 50.0  # a temperature at which these models' logits (tens apart) leave several tokens likely


def random_params(model, seed):
    """Every parameter N(0, 1): logits tens apart (no near-ties for argmax), and they depend on the
    positions and the context, not mostly on the last token as with small attention weights."""
    leaves, tree = jax.tree.flatten(nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)])


@pytest.fixture(scope="module")
def lm():
    model = EmbeddingLM(vocab_size=VOCAB, max_length=L, features=16, num_layers=1, num_heads=2)
    return model, random_params(model, 1)


_apply = jax.jit(lambda model, params, ids: model.apply(params, ids), static_argnums=0)


def next_logits(model, params, sequence):
    """Logits after ``sequence`` from the model applied to its last ``L`` tokens, at their real length."""
    window = np.asarray(sequence[-model.max_length :], np.int32)[None]
    return np.asarray(_apply(model, params, window))[0, -1]


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others(lm):
    model, params = lm
    first = generate(model, params, PROMPT, 20, temperature=HOT, seed=0)
    assert first.shape == (20,) and first.dtype == np.int32
    assert ((0 <= first) & (first < VOCAB)).all()
    np.testing.assert_array_equal(first, generate(model, params, PROMPT, 20, temperature=HOT, seed=0))
    assert not np.array_equal(first, generate(model, params, PROMPT, 20, temperature=HOT, seed=1))


@pytest.mark.parametrize("prompt", [[7], PROMPT, list(range(10, 10 + L))])
def test_top_k_1_is_greedy_decoding_including_past_the_context(lm, prompt):
    model, params = lm
    num_tokens = 2 * L + 3  # well past the context: the window slides
    sequence = list(prompt)
    for _ in range(num_tokens):
        sequence.append(int(np.argmax(next_logits(model, params, sequence))))
    expected = sequence[len(prompt) :]
    assert len(set(expected)) > 2  # not a model that repeats one token
    for temperature in (1.0, HOT):
        sampled = generate(model, params, prompt, num_tokens, top_k=1, temperature=temperature, seed=5)
        assert sampled.tolist() == expected


def test_top_k_never_samples_outside_the_k_most_likely_tokens(lm):
    model, params = lm
    k = 3
    sampled = generate(model, params, PROMPT, 3 * L, temperature=HOT, top_k=k, seed=2)
    sequence = list(PROMPT)
    ranks = []
    for token in sampled.tolist():
        logits = next_logits(model, params, sequence)
        top = np.argsort(-logits)[:k]
        assert token in top, (token, top, logits[top])
        ranks.append(int(np.flatnonzero(top == token)[0]))
        sequence.append(token)
    assert len(set(ranks)) > 1  # it samples, rather than always taking the argmax


def test_full_vocabulary_sampling_follows_the_model_distribution(lm):
    # One step, many seeds: the frequencies match softmax(logits / T) of the independent model.
    model, params = lm
    temperature = HOT
    probs = jax.nn.softmax(next_logits(model, params, PROMPT) / temperature)
    counts = np.bincount([generate(model, params, PROMPT, 1, temperature=temperature, seed=s)[0] for s in range(400)])
    counts = np.pad(counts, (0, VOCAB - len(counts)))
    likely = np.argsort(-np.asarray(probs))[:3]
    np.testing.assert_allclose(counts[likely] / 400, np.asarray(probs)[likely], atol=0.08)


def test_the_step_compiles_once_for_any_length_seed_and_temperature(lm):
    model, params = lm
    step = SamplingStep(model, top_k=4)
    generate(model, params, PROMPT, 20, top_k=4, step=step)  # 20 tokens, sliding past L=8
    assert step.traces == 1
    generate(model, params, [1], 11, top_k=4, temperature=0.5, seed=9, step=step)  # another prompt length
    assert step.traces == 1
    with pytest.raises(InvalidArgumentError, match="another model or top_k"):
        generate(model, params, PROMPT, 2, top_k=5, step=step)


def test_params_on_a_mesh_lower_the_step_once(lm):
    # A trained run's params live on the trainer's mesh; the step's outputs (window, length) go
    # back in as inputs, so a step whose outputs came back sharded otherwise than the first call's
    # inputs would be lowered and compiled a second time on its second call.
    model, params = lm
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    placed = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    lowered = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and "_step" in str(kwargs.get("fun_name")):
            lowered.append(kwargs["fun_name"])

    step = SamplingStep(model, top_k=4)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        ids = generate(model, placed, PROMPT, 12, top_k=4, step=step)
        again = generate(model, placed, [2], 5, top_k=4, seed=4, step=step)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert len(lowered) == 1, lowered
    np.testing.assert_array_equal(ids, generate(model, params, PROMPT, 12, top_k=4))  # same tokens as unplaced
    assert again.shape == (5,)


def test_calls_without_a_step_share_one_compiled_step(lm):
    model, params = lm
    generate(model, params, PROMPT, 3, top_k=7)
    from jaxembed.nn.sampling import _cached_step

    step = _cached_step(model, 7)
    traces = step.traces
    generate(model, params, [5, 6], 9, top_k=7, seed=3)
    assert step.traces == traces == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt_ids": []}, "prompt is empty: it must hold at least one token."),
        (
            {"prompt_ids": list(range(L + 1))},
            f"prompt is {L + 1} tokens; the model's context is {L} (max_length): give at most {L}.",
        ),
        ({"prompt_ids": [1, VOCAB]}, f"prompt[1]={VOCAB} is out of range; ids must lie in [0, {VOCAB})."),
        ({"num_tokens": 0}, "num_tokens=0 is not allowed: it must be an integer >= 1."),
        ({"temperature": 0.0}, "temperature=0.0 is not allowed: it must be a finite number > 0."),
        ({"temperature": -1}, "temperature=-1 is not allowed: it must be a finite number > 0."),
        ({"temperature": float("nan")}, "temperature=nan is not allowed: it must be a finite number > 0."),
        ({"temperature": float("inf")}, "temperature=inf is not allowed: it must be a finite number > 0."),
        ({"top_k": 0}, f"top_k=0 is not allowed: it must be an integer in [1, {VOCAB}]."),
        ({"top_k": VOCAB + 1}, f"top_k={VOCAB + 1} is not allowed: it must be an integer in [1, {VOCAB}]."),
        ({"seed": -1}, "seed=-1 is not allowed: it must be an integer in [0, 4294967295]."),
    ],
)
def test_bad_arguments_raise_one_clear_message(lm, kwargs, message):
    model, params = lm
    args = {"prompt_ids": PROMPT, "num_tokens": 4, **kwargs}
    with pytest.raises(InvalidArgumentError) as info:
        generate(model, params, args.pop("prompt_ids"), args.pop("num_tokens"), **args)
    assert str(info.value) == message


@pytest.fixture(scope="module")
def gpt2_lm():
    enc = get_encoding("gpt2")
    model = EmbeddingLM(vocab_size=enc.n_vocab, max_length=L, features=8)
    return enc, model, random_params(model, 2)


def test_sample_text_is_the_prompt_and_the_decoded_continuation(gpt2_lm):
    enc, model, params = gpt2_lm
    text = sample_text(model, params, enc, "ROMEO:", 10, top_k=1)
    prompt_ids = enc.encode("ROMEO:")
    expected = generate(model, params, prompt_ids, 10, top_k=1)
    assert text == enc.decode(prompt_ids + expected.tolist())
    assert text.startswith("ROMEO:")


def test_sample_text_maps_an_active_vocabulary_both_ways(gpt2_lm):
    enc, _, _ = gpt2_lm
    active_ids = np.array(sorted(set(enc.encode("ROMEO: O Romeo, wherefore art thou Romeo?"))), np.int32)
    model = EmbeddingLM(vocab_size=len(active_ids), max_length=L, features=8)
    params = model.init(jax.random.key(2), jnp.zeros((1, L), jnp.int32))  # boxed, as init returns them
    text = sample_text(model, params, enc, "ROMEO: O", 6, top_k=2, seed=4, active_ids=active_ids)
    compact = [int(np.searchsorted(active_ids, t)) for t in enc.encode("ROMEO: O")]
    expected = active_ids[generate(model, params, compact, 6, top_k=2, seed=4)]
    assert text == enc.decode(enc.encode("ROMEO: O") + expected.tolist())
    with pytest.raises(InvalidArgumentError, match=r"token ' Juliet' \(id 38201\) is not in the model's active"):
        sample_text(model, params, enc, "ROMEO: Juliet", 6, active_ids=active_ids)


def test_sample_text_errors_name_the_given_flags(gpt2_lm):
    enc, model, params = gpt2_lm
    flags = {"prompt": "--prompt", "max_length": "data.max_length", "top_k": "--top-k"}
    with pytest.raises(InvalidArgumentError) as info:
        sample_text(model, params, enc, "", 5, names=flags)
    assert str(info.value) == "--prompt='' is not allowed: it must encode to at least one token."
    with pytest.raises(InvalidArgumentError) as info:
        sample_text(model, params, enc, " the" * (L + 1), 5, names=flags)
    assert (
        str(info.value)
        == f"--prompt is {L + 1} tokens; the model's context is {L} (data.max_length): give at most {L}."
    )
    with pytest.raises(InvalidArgumentError, match=r"^--top-k=0 is not allowed"):
        sample_text(model, params, enc, "to be", 5, top_k=0, names=flags)
