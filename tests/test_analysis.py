"""The numbers of ``jaxembed.report.analysis`` against independent float64 numpy / plain-Python references."""

import math
import re

import numpy as np
import pytest

from jaxembed.report import analysis
from jaxembed.text.tokenizer import get_encoding


@pytest.fixture(scope="module")
def enc():
    return get_encoding("gpt2")


def reference_locality(table):
    """Plain loops: mean cosine over |i-j| == 1 pairs minus over |i-j| >= L/2 pairs."""
    table = [np.asarray(row, dtype=np.float64) for row in table]
    length = len(table)

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    near = [cos(table[i], table[j]) for i in range(length) for j in range(length) if abs(i - j) == 1]
    far = [cos(table[i], table[j]) for i in range(length) for j in range(length) if abs(i - j) >= length / 2]
    return sum(near) / len(near) - sum(far) / len(far)


# Position locality.


@pytest.mark.parametrize("length", [2, 3, 7, 16])
def test_position_locality_matches_loops(length):
    table = np.random.default_rng(length).normal(size=(length, 8))
    assert analysis.position_locality(table) == pytest.approx(reference_locality(table), abs=1e-12)


def test_position_locality_separates_ordered_from_shuffled_and_uniform_tables():
    angles = np.linspace(0, np.pi, 16)  # a smooth path: neighbours alike, far ends opposite
    ordered = np.stack([np.cos(angles), np.sin(angles), np.zeros(16)], axis=1)
    assert analysis.position_locality(ordered) == pytest.approx(reference_locality(ordered), abs=1e-12)
    assert analysis.position_locality(ordered) > 1.0
    uniform = np.ones((16, 3)) + 1e-3 * np.random.default_rng(0).normal(size=(16, 3))
    assert abs(analysis.position_locality(uniform)) < 1e-3  # embeddings-only: one shared vector


@pytest.mark.parametrize("bad", [np.ones((1, 4)), np.ones(4)])
def test_position_locality_rejects_fewer_than_two_positions(bad):
    with pytest.raises(ValueError, match="at least 2 positions"):
        analysis.position_locality(bad)


# Candidates and centred neighbours.


def test_neighbor_candidates_match_python():
    counts = np.random.default_rng(1).integers(0, 6, size=200)
    for min_count in (1, 3, 5):
        expected = [i for i, c in enumerate(counts.tolist()) if c >= min_count]
        assert analysis.neighbor_candidates(counts, min_count).tolist() == expected


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_neighbor_candidates_reject_bad_min_count(bad):
    with pytest.raises(ValueError, match="min_count"):
        analysis.neighbor_candidates(np.ones(5), bad)


def reference_centred_neighbors(table, query, k, candidates):
    x = np.asarray(table, dtype=np.float64)
    mean = x[candidates].mean(axis=0)
    q = x[query] - mean
    scored = []
    for j in candidates:
        if j == query:
            continue
        c = x[j] - mean
        scored.append((j, float(q @ c / (np.linalg.norm(q) * np.linalg.norm(c)))))
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))[:k]


def test_centred_neighbors_match_reference_and_differ_from_raw():
    rng = np.random.default_rng(2)
    # A shared direction much larger than the token-specific parts, as in a trained table.
    table = 10.0 + rng.normal(size=(60, 8))
    candidates = list(range(0, 60, 2))
    for query in (0, 1, 7):
        got = analysis.nearest_neighbors(table, [query], k=6, candidate_ids=candidates, centre=True)[0]
        expected = reference_centred_neighbors(table, query, 6, candidates)
        assert [i for i, _ in got] == [i for i, _ in expected]
        np.testing.assert_allclose([c for _, c in got], [c for _, c in expected], atol=1e-6)
    raw = analysis.nearest_neighbors(table, [1], k=6, candidate_ids=candidates)[0]
    assert min(c for _, c in raw) > 0.9  # raw cosine: everything looks alike
    assert [i for i, _ in raw] != [i for i, _ in analysis.nearest_neighbors(table, [1], 6, candidates, centre=True)[0]]


def test_rank_neighbors_uses_the_candidate_rule_and_skips_unseen_probes():
    rng = np.random.default_rng(3)
    table = 5.0 + rng.normal(size=(40, 6))
    counts = rng.integers(0, 6, size=40)
    counts[[4, 9]] = 0  # probes that never occur
    counts[5] = 7
    got = analysis.rank_neighbors(table, counts, [5, 4, 9], k=4, min_count=3)
    candidates = [i for i in range(40) if counts[i] >= 3]
    expected = reference_centred_neighbors(table, 5, 4, candidates)
    assert [i for i, _ in got[0]] == [i for i, _ in expected]
    assert got[1] == [] and got[2] == []


def test_random_pair_cosine_matches_all_pairs():
    rng = np.random.default_rng(4)
    table = 3.0 + rng.normal(size=(50, 7))
    table[10] = 0.0  # a zero row has cosine 0 with everything
    candidates = [i for i in range(50) if i % 3 != 1]
    for centre in (False, True):
        x = table[candidates] - (table[candidates].mean(axis=0) if centre else 0)
        norms = np.linalg.norm(x, axis=1)
        unit = x / np.where(norms > 0, norms, 1)[:, None]
        sims = unit @ unit.T
        off = sims[~np.eye(len(candidates), dtype=bool)]
        mean, std = analysis.random_pair_cosine(table, candidates, centre=centre)
        assert mean == pytest.approx(off.mean(), abs=1e-12)
        assert std == pytest.approx(off.std(), abs=1e-9)
    raw_mean, _ = analysis.random_pair_cosine(table, candidates)
    centred_mean, _ = analysis.random_pair_cosine(table, candidates, centre=True)
    assert raw_mean > 0.8 and abs(centred_mean) < 0.1
    assert all(math.isnan(x) for x in analysis.random_pair_cosine(table, [3]))


# Token labels.


def parse_label(label):
    """Back from a label to the token's bytes: repr-quoted text with ⟨hex⟩ runs."""
    text = eval(label)  # a repr of a str (the label's own format)
    out = b""
    for piece in re.split("(⟨[0-9a-f ]+⟩)", text):
        out += bytes.fromhex(piece[1:-1]) if piece.startswith("⟨") else piece.encode("utf-8")
    return out


def test_token_labels_are_readable_and_round_trip_for_the_whole_vocabulary(enc):
    partial = 0
    for token_id in range(enc.n_vocab):
        label = analysis.token_label(enc, token_id)
        assert isinstance(eval(label), str), label  # never a bytes literal such as b'\xe2\x80'
        assert parse_label(label) == enc.decode_single_token_bytes(token_id)
        partial += "⟨" in label
    assert partial > 100  # GPT-2 has hundreds of tokens holding part of a character


def test_partial_utf8_labels(enc):
    right_quote = enc.encode("’")  # split across two tokens
    assert len(right_quote) == 2
    assert [analysis.token_label(enc, i) for i in right_quote] == ["'⟨e2 80⟩'", "'⟨99⟩'"]
    assert analysis.readable_bytes(b"ok\xff\xfe \xc3") == "ok⟨ff fe⟩ ⟨c3⟩"


def test_format_neighbors_flags_unseen_probes(enc):
    thou, function = enc.encode(" thou")[0], enc.encode(" function")[0]
    counts = np.zeros(enc.n_vocab, int)
    counts[thou] = 4
    text = analysis.format_neighbors(enc, [thou, function], [[(198, 0.5)], []], counts)
    lines = text.splitlines()
    assert lines[0] == "' thou'     -> '\\n' 0.50"
    assert lines[1].startswith("' function' -> (never in the training text")


# Validation-loss summary.


def rows(val, train=None):
    out = []
    for i, v in enumerate(val):
        row = {"step": 10 * i, "val_loss": v}
        if i and train is not None:
            row["train_loss"] = train[i]
        out.append(row)
    return out


def test_val_loss_summary_best_and_no_overfit():
    summary = analysis.val_loss_summary(rows([10.8, 6.0, 5.5, 5.51], [None, 6.5, 5.9, 5.4]))
    assert summary == {
        "val_loss_initial": 10.8,
        "val_loss_final": 5.51,
        "val_loss_best": 5.5,
        "val_loss_best_step": 20,
        "overfitting_from_step": None,  # rose only 0.01 nats, once: within the margin
        "val_evaluations": 4,
        "val_loss_noise": None,  # 4 evaluations: too few to estimate the noise
        "overfit_margin": 0.02,
        "overfit_margin_floor": 0.02,
        "overfit_noise_factor": 2.0,
        "overfit_evals_above": 0,
        "overfit_min_evals": 3,
    }


def test_val_loss_summary_overfitting_needs_val_up_and_train_down():
    val = [10.8, 6.0, 5.5, 5.8, 5.9, 6.0]  # three evaluations in a row well above the best
    assert analysis.val_loss_summary(rows(val, [None, 6.5, 5.9, 5.0, 4.9, 4.8]))["overfitting_from_step"] == 20
    # Validation rose, but so did training: a bad step, not overfitting.
    assert analysis.val_loss_summary(rows(val, [None, 6.5, 5.9, 6.2, 6.3, 6.4]))["overfitting_from_step"] is None


def test_val_loss_summary_ignores_nan_and_handles_no_validation():
    summary = analysis.val_loss_summary(rows([10.8, float("nan"), 5.0]))
    assert summary["val_loss_best"] == 5.0 and summary["val_loss_best_step"] == 20
    empty = analysis.val_loss_summary([{"step": 1, "train_loss": 3.0}])
    losses = ["val_loss_initial", "val_loss_final", "val_loss_best", "val_loss_best_step", "val_loss_noise"]
    assert {empty[k] for k in [*losses, "overfitting_from_step"]} == {None}
    assert empty["val_evaluations"] == empty["overfit_evals_above"] == 0


def reference_noise(losses):
    """Plain Python: sample std of consecutive changes over the second half, over sqrt(2)."""
    late = losses[len(losses) // 2 :]
    changes = [b - a for a, b in zip(late, late[1:])]
    mean = sum(changes) / len(changes)
    return math.sqrt(sum((c - mean) ** 2 for c in changes) / (len(changes) - 1)) / math.sqrt(2)


def test_one_noisy_uptick_is_not_overfitting():
    # The reported case: 60 steps, one evaluation 0.034 nats above the best while training still falls.
    val = [10.8, 7.1, 6.3, 5.95, 5.80, 5.71, 5.744]
    summary = analysis.val_loss_summary(rows(val, [None, 7.3, 6.5, 6.1, 5.9, 5.8, 5.7]))
    assert summary["val_loss_best_step"] == 50 and summary["overfitting_from_step"] is None
    assert summary["val_evaluations"] == 7 and summary["overfit_min_evals"] == 3
    assert summary["val_loss_noise"] == pytest.approx(reference_noise(val), abs=1e-12)
    margin = max(0.02, 2 * reference_noise(val))
    assert summary["overfit_margin"] == pytest.approx(margin, abs=1e-12)
    assert summary["overfit_evals_above"] == (val[-1] - min(val) > margin) == 0  # one, and within the noise
    # The same uptick with a tiny margin: one evaluation above is still not three.
    assert (
        analysis.val_loss_summary(rows(val, [None, 7.3, 6.5, 6.1, 5.9, 5.8, 5.7]), noise_factor=0)[
            "overfit_evals_above"
        ]
        == 1
    )


def test_a_sustained_rise_above_the_noise_is_overfitting():
    val = [10.8, 6.0, 5.5, 5.40, 5.38, 5.39, 5.37, 5.45, 5.52, 5.60]
    train = [None, 6.2, 5.6, 5.3, 5.1, 5.0, 4.9, 4.8, 4.7, 4.6]
    summary = analysis.val_loss_summary(rows(val, train))
    margin = max(0.02, 2 * reference_noise(val))
    assert summary["overfit_margin"] == pytest.approx(margin, abs=1e-12)
    assert sum(v - 5.37 > margin for v in val[-3:]) == 3  # the last three clear the margin
    assert summary["val_loss_best_step"] == 60 and summary["overfitting_from_step"] == 60
    assert summary["overfit_evals_above"] == 3


def test_a_rise_within_the_noise_is_not_overfitting():
    # A jittery plateau: the last three are 0.03-0.06 above the best, but the evaluations jump by ~0.07.
    val = [10.8, 6.0, 5.5, 5.47, 5.40, 5.49, 5.41, 5.50, 5.43, 5.46]
    train = [None, 6.2, 5.6, 5.3, 5.1, 5.0, 4.9, 4.8, 4.7, 4.6]
    summary = analysis.val_loss_summary(rows(val, train))
    assert min(val[-3:]) - min(val) > analysis.OVERFIT_MARGIN  # the fixed 0.02 margin alone would fire
    assert summary["overfit_margin"] == pytest.approx(2 * reference_noise(val), abs=1e-12)
    assert summary["overfit_margin"] > max(val[-3:]) - min(val)  # 0.116 > 0.10: all three within the noise
    assert summary["overfitting_from_step"] is None
