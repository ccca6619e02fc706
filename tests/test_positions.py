"""Position schemes (learned, sinusoidal, rope, alibi, none) against float64 numpy and the papers.

References are written from the papers, not from jaxembed: the sinusoidal table from Vaswani
et al. 2017 section 3.5; rotary as RoFormer's block-diagonal rotation matrix R_m (eq. 15) applied
to queries and keys; ALiBi's slopes as the paper's geometric sequence 2^(-8i/n) and its bias as
-m * (i - j). The whole model is checked against a numpy transformer with each scheme.
"""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import np_layer_norm

from jaxembed import config as config_lib
from jaxembed.errors import InvalidArgumentError
from jaxembed.nn.model import EmbeddingLM, embedding_tables
from jaxembed.nn.positions import (
    POSITIONS,
    alibi_bias,
    alibi_slopes,
    causal_attention,
    rotary_embedding,
    sinusoidal_table,
)
from jaxembed.train.loop import train_and_evaluate
from jaxembed.train.trainer import make_optimizer
from jaxembed.train.workdir import WorkdirError

V, L, D, H, B = 13, 6, 8, 2, 3


def np_sinusoidal(length, features):
    table = np.zeros((length, features))
    for p in range(length):
        for i in range(0, features, 2):
            angle = p / 10000 ** (i / features)
            table[p, i] = math.sin(angle)
            if i + 1 < features:
                table[p, i + 1] = math.cos(angle)
    return table


def np_rotation(m, width):
    """RoFormer eq. 15: block-diagonal 2x2 rotations by m * theta_i, theta_i = 10000^(-2i/d)."""
    r = np.zeros((width, width))
    for i in range(width // 2):
        angle = m * 10000 ** (-2 * i / width)
        c, s = math.cos(angle), math.sin(angle)
        r[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[c, -s], [s, c]]
    return r


def paper_slopes(n):
    """Press et al. 2022: 2^(-8/n), 2^(-16/n), ... for n a power of two."""
    return [2 ** (-8 * (i + 1) / n) for i in range(n)]


def np_attention(x_BxLxD, p, position):
    f = {name: {k: np.asarray(v, np.float64) for k, v in leaf.items()} for name, leaf in p.items()}
    q = np.einsum("bld,dhk->blhk", x_BxLxD, f["query"]["kernel"]) + f["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", x_BxLxD, f["key"]["kernel"]) + f["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", x_BxLxD, f["value"]["kernel"]) + f["value"]["bias"]
    length, width, heads = x_BxLxD.shape[1], q.shape[-1], q.shape[2]
    if position == "rope":
        rot = np.stack([np_rotation(m, width) for m in range(length)])  # [L, K, K]
        q, k = np.einsum("lij,blhj->blhi", rot, q), np.einsum("lij,blhj->blhi", rot, k)
    scores = np.einsum("bqhk,bthk->bhqt", q, k) / np.sqrt(width)
    if position == "alibi":
        slopes = np.array(paper_slopes(heads))
        distance = np.arange(length)[:, None] - np.arange(length)[None, :]
        scores = scores - slopes[None, :, None, None] * distance
    scores = np.where(np.triu(np.ones((length, length), bool), k=1), -np.inf, scores)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqt,bthk->bqhk", w, v)
    return np.einsum("blhk,hkd->bld", o, f["out"]["kernel"]) + f["out"]["bias"]


def np_forward(params, ids, position):
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    tok = p["embed"]["token"]["embedding"]
    h = tok[ids]
    if position == "learned":
        h = h + p["embed"]["position"]["embedding"][: ids.shape[-1]]
    elif position == "sinusoidal":
        h = h + np_sinusoidal(ids.shape[-1], tok.shape[1])
    for i in range(sum(name.startswith("block_") for name in p)):
        block = p[f"block_{i}"]
        h = h + np_attention(np_layer_norm(h, block["norm"]), block["attention"], position)
    return h @ tok[:V].T


def make_lm(position, **kwargs):
    return EmbeddingLM(
        **(dict(vocab_size=V, max_length=L, features=D, init_stddev=0.5, num_layers=2, num_heads=H) | kwargs),
        position=position,
    )


def noisy_params(lm, seed=0):
    params = nn.unbox(lm.init(jax.random.key(seed), jnp.zeros((1, L), jnp.int32)))
    rng = np.random.default_rng(seed + 7)
    return jax.tree.map(lambda x: jnp.asarray(x + 0.3 * rng.standard_normal(x.shape), x.dtype), params)


def ids_of(shape, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int32)


def test_sinusoidal_table_is_the_papers_formula_in_float64():
    for length, features in [(16, 32), (7, 5), (1024, 768)]:
        np.testing.assert_allclose(sinusoidal_table(length, features), np_sinusoidal(length, features), atol=2e-4)
    # Later positions continue the same table (what lets it run past the trained length).
    np.testing.assert_allclose(sinusoidal_table(4, 8, start_index=12), np_sinusoidal(16, 8)[12:], atol=1e-5)


def test_sinusoidal_is_not_a_parameter_nor_in_the_optimiser_state():
    lm = make_lm("sinusoidal", num_layers=1)
    params = lm.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))
    assert set(nn.unbox(params)["params"]["embed"]) == {"token"}
    opt_state = make_optimizer(config_lib.named_config("tiny").optim, 10).init(params)
    sizes = sorted({x.shape for x in jax.tree.leaves(opt_state) if hasattr(x, "shape")})
    assert (L, D) not in sizes  # no table-shaped moments
    _, table = embedding_tables(params, V, "sinusoidal", L)
    np.testing.assert_allclose(table, np_sinusoidal(L, D), atol=1e-6)


@pytest.mark.parametrize("position", POSITIONS)
def test_model_matches_float64_numpy_for_every_scheme(position):
    lm = make_lm(position)
    params = noisy_params(lm)
    ids = ids_of((B, L))
    got = np.asarray(jax.jit(lm.apply)(params, ids), np.float64)
    np.testing.assert_allclose(got, np_forward(params, ids, position), rtol=2e-4, atol=2e-4)


def test_rotary_matches_the_rotation_matrix_and_scores_depend_only_on_the_offset():
    rng = np.random.default_rng(0)
    x_BxLxHxK = rng.standard_normal((2, 9, 3, 8)).astype(np.float32)
    want = np.einsum("lij,blhj->blhi", np.stack([np_rotation(m, 8) for m in range(9)]), x_BxLxHxK.astype(np.float64))
    np.testing.assert_allclose(rotary_embedding(jnp.asarray(x_BxLxHxK)), want, atol=1e-5)
    q, k = rng.standard_normal((2, 8)).astype(np.float32)

    def score(m, n):
        qm = rotary_embedding(jnp.asarray(q)[None, None, None], jnp.array([m]))
        kn = rotary_embedding(jnp.asarray(k)[None, None, None], jnp.array([n]))
        return float(jnp.sum(qm * kn))

    for m, n in [(5, 2), (3, 3), (1, 7)]:
        for shift in (1, 10, 100):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3  # and it does depend on the offset


def test_alibi_slopes_follow_the_paper_for_4_8_and_12_heads():
    np.testing.assert_allclose(alibi_slopes(4), [1 / 4, 1 / 16, 1 / 64, 1 / 256])
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
    # Not a power of two: the 8-head slopes, then every other slope of 16 heads for the other 4.
    np.testing.assert_allclose(alibi_slopes(12), paper_slopes(8) + paper_slopes(16)[0::2][:4])
    with pytest.raises(InvalidArgumentError, match="num_heads=0"):
        alibi_slopes(0)


def test_alibi_bias_against_numpy():
    distance = np.arange(5)[:, None] - np.arange(5)[None, :]
    want = -np.array(paper_slopes(4))[:, None, None] * distance
    np.testing.assert_allclose(alibi_bias(4, 5), want, rtol=1e-6)


@pytest.mark.parametrize("position", POSITIONS)
def test_changing_a_later_token_never_changes_earlier_outputs(position):
    lm = make_lm(position)
    params = noisy_params(lm)
    ids = ids_of((1, L))
    base = np.asarray(lm.apply(params, ids))
    for t in range(L - 1):
        changed = ids.copy()
        changed[0, t + 1] = (changed[0, t + 1] + 1) % V
        out = np.asarray(lm.apply(params, changed))
        np.testing.assert_array_equal(out[0, : t + 1], base[0, : t + 1])
        assert not np.allclose(out[0, t + 1], base[0, t + 1])


def test_only_the_learned_table_refuses_sequences_past_max_length():
    ids = ids_of((1, 4 * L))
    for position in POSITIONS:
        lm = make_lm(position)
        params = noisy_params(lm)
        if position == "learned":
            with pytest.raises(InvalidArgumentError, match="no rows past it"):
                lm.apply(params, ids)
        else:
            out = np.asarray(lm.apply(params, ids))
            assert out.shape == (1, 4 * L, V) and np.isfinite(out).all()
            np.testing.assert_allclose(out[:, :L], lm.apply(params, ids[:, :L]), rtol=1e-5, atol=1e-5)


def test_attention_schemes_need_attention_and_rope_an_even_head_width():
    with pytest.raises(InvalidArgumentError, match=r"position='rope' acts inside attention, but num_layers=0"):
        make_lm("rope", num_layers=0)
    with pytest.raises(InvalidArgumentError, match="even head width"):
        make_lm("rope", features=6, num_heads=2)
    with pytest.raises(InvalidArgumentError, match="choose one of learned, sinusoidal, rope, alibi, none"):
        make_lm("rotary")
    c = config_lib.named_config("tiny")
    c.model.position, c.model.num_layers = "alibi", 0
    with pytest.raises(InvalidArgumentError, match=r"model.position='alibi'.*model.num_layers=0"):
        config_lib.validate(c)
    c.model.position = "wavelet"
    with pytest.raises(InvalidArgumentError, match=r"model.position='wavelet'"):
        config_lib.validate(c)


def test_bfloat16_compute_is_close_for_attention_schemes():
    ids = ids_of((B, L))
    for position in ("rope", "alibi"):
        full = make_lm(position)
        params = noisy_params(full)
        half = make_lm(position, dtype=jnp.bfloat16)
        np.testing.assert_allclose(
            np.asarray(half.apply(params, ids), np.float32), full.apply(params, ids), rtol=0.1, atol=0.3
        )


def test_causal_attention_keeps_an_unbatched_input():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 2, 4)), jnp.float32)
    np.testing.assert_allclose(
        causal_attention(x, x, x, position="alibi"), causal_attention(x[None], x[None], x[None], position="alibi")[0]
    )


L_TINY = 16


def tiny_config(position="learned"):
    c = config_lib.named_config("tiny")
    c.model.features, c.model.position, c.train.steps, c.train.eval_every = 8, position, 40, 20
    c.train.eval_batches = 4
    return c


@pytest.fixture(scope="module")
def compared(corpus_path, tmp_path_factory):
    """``compare_positions``: every scheme trained 40 steps on Romeo and Juliet (8-wide tables)."""
    from jaxembed.report import compare_positions

    root = tmp_path_factory.mktemp("positions")
    compare_positions(tiny_config(), root, text=corpus_path.read_text(encoding="utf-8"), progress=False)
    return root


def test_every_scheme_trains_and_its_length_table_starts_at_the_ordinary_loss(compared):
    for position in POSITIONS:
        report = json.loads((compared / position / "report.json").read_text())
        assert report["position"] == position
        assert report["val_loss_final"] < report["val_loss_initial"] - 1.0, position  # 10.8 -> about 7.6
        by_length = report["val_loss_by_length"]
        assert by_length[str(L_TINY)] == pytest.approx(report["val_loss_final"], abs=1e-6), position
        if position == "learned":
            assert set(by_length) == {str(L_TINY)}
        else:
            assert set(by_length) == {str(n * L_TINY) for n in (1, 2, 4)}
            assert all(np.isfinite(v) for v in by_length.values())


def test_resuming_with_another_position_scheme_is_refused(compared, corpus_path):
    text = corpus_path.read_text(encoding="utf-8")
    with pytest.raises(WorkdirError, match=r"model.position"):
        train_and_evaluate(tiny_config("rope"), compared / "alibi", text=text, progress=False)


def test_compare_page_holds_each_runs_numbers(compared):
    from jaxembed.report.analysis import position_locality

    numbers = json.loads((compared / "compare.json").read_text())["schemes"]
    assert list(numbers) == list(POSITIONS)
    for name in POSITIONS:
        report = json.loads((compared / name / "report.json").read_text())
        assert numbers[name]["val_loss_by_length"] == report["val_loss_by_length"]
    gap = json.loads((compared / "learned" / "report.json").read_text())["positions_shuffled_gap"]
    assert numbers["learned"]["positions_shuffled_gap"] == pytest.approx(gap, abs=1e-6)
    for name in ("sinusoidal", "rope", "alibi", "none"):
        assert numbers[name]["positions_shuffled_gap"] is None
    for name in ("rope", "alibi", "none"):
        assert numbers[name]["position_locality"] is None
        assert not (compared / name / "projector" / "position_embeddings.npy").exists()
        assert not (compared / name / "positions.png").exists()
    # The sinusoidal locality and export are the formula's table; the learned ones the trained table's.
    sinusoidal = np_sinusoidal(L_TINY, 8)
    assert numbers["sinusoidal"]["position_locality"] == pytest.approx(position_locality(sinusoidal), abs=1e-4)
    exported = np.load(compared / "sinusoidal" / "projector" / "position_embeddings.npy")
    np.testing.assert_allclose(exported, sinusoidal, atol=1e-5)
    learned = np.load(compared / "learned" / "projector" / "position_embeddings.npy")
    assert numbers["learned"]["position_locality"] == pytest.approx(position_locality(learned), abs=1e-6)
    page = (compared / "compare.md").read_text()
    assert "loss_by_length.png" in page and (compared / "positions.png").exists()
    for name in POSITIONS:
        assert f"\n{name} " in page  # a row of the table per scheme
        # A summary line per scheme, its name said once ("alibi: ALiBi: ..." said it twice).
        (line,) = [x for x in page.splitlines() if x.lower().startswith(f"- {name}") and x.endswith("; 40 steps")]
        assert not line.lower().startswith(f"- {name}: {name}"), line
    assert "none beyond" in (compared / "learned" / "report.md").read_text()  # why it stops at L


def test_report_samples_text_before_and_after_from_the_same_prompt_and_seed(compared):
    from jaxembed.nn.sampling import generate
    from jaxembed.train.run import load_run

    run = load_run(compared / "rope")
    samples = json.loads((compared / "rope" / "report.json").read_text())["samples"]
    prompt_ids = samples["prompt_ids"]
    assert run.enc.decode(prompt_ids) == samples["prompt"]
    assert samples["before"].startswith(samples["prompt"]) and samples["after"].startswith(samples["prompt"])
    assert samples["before"] != samples["after"]
    # The trained sample, recomputed from the checkpoint (sampling settings as the report states them).
    assert "temperature 0.8, top-k 40, seed 0" in samples["settings"]
    ids = generate(run.model, run.params, prompt_ids, 30, temperature=0.8, top_k=40, seed=0)
    assert samples["after"] == samples["prompt"] + run.enc.decode([int(i) for i in ids])
    # report.md shows the prompt on its own, then prompt + continuation, always in double quotes.
    page = (compared / "rope" / "report.md").read_text()
    prompt = json.dumps(samples["prompt"], ensure_ascii=False)
    continuation = json.dumps(samples["after"][len(samples["prompt"]) :], ensure_ascii=False)
    assert f"prompt:          {prompt}\n" in page
    assert f"after training:  {prompt} + {continuation}" in page


SHARDED_CHECK = """
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from jaxembed.config import named_config
from jaxembed.train.trainer import Trainer, make_mesh, eval_step
for position in ("rope", "alibi"):
    c = named_config("tiny")
    c.model.position, c.mesh.model = position, 2
    trainer = Trainer.from_config(c, 50257, make_mesh(1, 2))
    state = trainer.init(jax.random.key(0))
    spec = state.params["params"]["block_0"]["attention"]["query"]["kernel"].sharding.spec
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50257, (16, 16)), jnp.int32)
    sharded = float(trainer.eval(state.params, ids, ids))
    host = jax.tree.map(np.asarray, nn.unbox(state.params))
    single = float(eval_step(host, ids, ids, model=trainer.model))
    print(position, tuple(spec), sharded, single)
"""


def test_rope_and_alibi_with_heads_split_over_the_model_axis_match_one_device():
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" ", 1) for line in proc.stdout.strip().splitlines()]
    assert [name for name, _ in rows] == ["rope", "alibi"]
    for _, rest in rows:
        spec, sharded, single = rest.rsplit(" ", 2)
        assert "'model'" in spec  # the heads axis is split
        assert float(sharded) == pytest.approx(float(single), abs=1e-5)


def test_compare_refuses_an_unknown_scheme_in_one_line(tmp_path, capsys):
    from jaxembed.cli import main

    assert main(["compare", "--workdir", str(tmp_path / "c"), "--positions", "learned,rotary"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "jaxembed compare: error: --positions='rotary' is not allowed; choose one of learned, sinusoidal, rope, "
        "alibi, none."
    )
    assert not (tmp_path / "c").exists()
