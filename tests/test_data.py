"""Strided windows on Grain, checked against a plain-Python port of the seed."""

import numpy as np
import pytest
from seed_values import SEED_FIRST_BATCH, SEED_HEADER

from jaxembed import data


def reference_batches(ids, batch_size, max_length, stride, drop_last):
    """The seed's GPTDatasetV1 + a torch-style sequential DataLoader, in plain Python."""
    ids = list(ids)
    inputs, targets = [], []
    for i in range(0, len(ids) - max_length, stride):
        inputs.append(ids[i : i + max_length])
        targets.append(ids[i + 1 : i + max_length + 1])
    batches = []
    for b in range(0, len(inputs), batch_size):
        chunk_in, chunk_tg = inputs[b : b + batch_size], targets[b : b + batch_size]
        if len(chunk_in) < batch_size and drop_last:
            break
        batches.append((chunk_in, chunk_tg))
    return batches


def loader(ids, **kwargs):
    kwargs.setdefault("shard_index", 0)
    kwargs.setdefault("shard_count", 1)
    return data.create_dataloader(ids, **kwargs)


def as_lists(batches):
    return [(x.tolist(), y.tolist()) for x, y in batches]


@pytest.fixture(scope="module")
def corpus_ids(corpus_path):
    return data.tokenize(corpus_path.read_text(encoding="utf-8"))


def test_seed_first_batch():
    inputs, targets = next(iter(loader(SEED_HEADER, batch_size=8, max_length=4, stride=4, shuffle=False)))
    assert inputs.tolist() == SEED_FIRST_BATCH
    assert inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])


@pytest.mark.parametrize(
    "max_length, stride, batch_size, drop_last",
    [(4, 4, 8, True), (4, 4, 8, False), (5, 2, 3, False), (3, 7, 4, False), (16, 16, 5, True), (1, 1, 64, False)],
)
def test_sequential_batches_equal_seed_reference(max_length, stride, batch_size, drop_last):
    ids = np.random.default_rng(0).integers(0, 50257, size=503)
    got = as_lists(
        loader(ids, batch_size=batch_size, max_length=max_length, stride=stride, shuffle=False, drop_last=drop_last)
    )
    want = reference_batches(ids.tolist(), batch_size, max_length, stride, drop_last)
    assert got == want
    if not drop_last and len(range(0, 503 - max_length, stride)) % batch_size:
        assert len(got[-1][0]) < batch_size  # the final short batch is kept


def test_corpus_first_batch_differs_from_seed_only_in_revision_word(corpus_ids):
    # The shared file is a later revision saying "This eBook" where the seed's
    # said "This ebook": one token differs (46566 vs 47179), see DESIGN.md.
    inputs, _ = next(iter(loader(corpus_ids, batch_size=8, max_length=4, stride=4, shuffle=False)))
    diff = np.argwhere(inputs != np.array(SEED_FIRST_BATCH))
    assert diff.tolist() == [[3, 3]]


def window_set(batches):
    return sorted(tuple(row) for x, _ in batches for row in x.tolist())


def test_shuffle_is_seeded_and_visits_every_window_once(corpus_ids):
    kwargs = dict(batch_size=7, max_length=16, stride=8, drop_last=False)
    a = list(loader(corpus_ids, shuffle=True, seed=1, **kwargs))
    b = list(loader(corpus_ids, shuffle=True, seed=1, **kwargs))
    c = list(loader(corpus_ids, shuffle=True, seed=2, **kwargs))
    assert as_lists(a) == as_lists(b)
    assert as_lists(a) != as_lists(c)
    reference = [tuple(w) for x, _ in reference_batches(corpus_ids, 10**9, 16, 8, False) for w in x]
    assert window_set(a) == sorted(reference)  # each window exactly once
    for x, y in a:
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])


def test_epochs_reshuffle_and_each_epoch_is_complete():
    ids = np.arange(200)
    epochs = list(loader(ids, batch_size=4, max_length=3, stride=3, shuffle=True, num_epochs=2, drop_last=False))
    per_epoch = len(epochs) // 2
    first, second = epochs[:per_epoch], epochs[per_epoch:]
    assert window_set(first) == window_set(second)
    assert as_lists(first) != as_lists(second)


def test_infinite_epochs():
    it = iter(loader(np.arange(50), batch_size=2, max_length=4, stride=4, num_epochs=None))
    assert len([next(it) for _ in range(100)]) == 100  # 6 batches per epoch, many epochs


def test_state_restore_mid_epoch_yields_exactly_the_rest(corpus_ids):
    kwargs = dict(batch_size=8, max_length=32, stride=16, shuffle=True, seed=3)
    full = as_lists(loader(corpus_ids, **kwargs))
    it = iter(loader(corpus_ids, **kwargs))
    for _ in range(5):
        next(it)
    state = it.get_state()
    resumed = iter(loader(corpus_ids, **kwargs))
    resumed.set_state(state)
    assert as_lists(resumed) == full[5:]


def test_worker_processes_match_in_process(corpus_ids):
    kwargs = dict(batch_size=8, max_length=16, stride=16, shuffle=True, seed=5, num_epochs=1)
    in_process = as_lists(loader(corpus_ids, **kwargs))
    it = iter(loader(corpus_ids, num_workers=2, **kwargs))
    try:
        with_workers = as_lists(it)
    finally:
        it.close()
    assert with_workers == in_process


@pytest.mark.parametrize("shard_count", [2, 3])
def test_shards_are_disjoint_and_cover_every_window(shard_count):
    ids = np.random.default_rng(1).integers(0, 1000, size=400)
    kwargs = dict(batch_size=5, max_length=4, stride=3, shuffle=True, seed=7, drop_last=False)
    shards = [
        window_starts(loader(ids, shard_index=i, shard_count=shard_count, **kwargs), ids) for i in range(shard_count)
    ]
    union = set().union(*shards)
    assert sum(len(s) for s in shards) == len(union)  # disjoint
    assert union == set(range(0, len(ids) - 4, 3))  # complete


def window_starts(batches, ids):
    # Random ids make every 4-gram unique, so a window identifies its start.
    index = {tuple(ids[s : s + 4].tolist()): s for s in range(len(ids) - 4)}
    return [index[tuple(row)] for x, _ in batches for row in x.tolist()]


def test_default_shard_is_this_process():
    # Single-process jax: the default shard is the whole data.
    batches = list(
        data.create_dataloader(np.arange(40), batch_size=2, max_length=4, stride=4, shuffle=False, drop_last=False)
    )
    assert sum(len(x) for x, _ in batches) == len(range(0, 36, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_length=0), "max_length=0"),
        (dict(stride=0), "stride=0"),
        (dict(stride=-2), "stride=-2"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=2.5), "batch_size=2.5"),
        (dict(num_workers=-1), "num_workers=-1"),
        (dict(num_epochs=0), "num_epochs=0"),
        (dict(shard_index=2, shard_count=2), "shard_index=2"),
        (dict(batch_size=1000), "batch_size=1000"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(kwargs, message):
    args = dict(batch_size=2, max_length=4, stride=4, shard_index=0, shard_count=1) | kwargs
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        data.create_dataloader(np.arange(100), **args)


def test_text_too_short_for_one_window():
    with pytest.raises(ValueError, match=r"3 tokens.*max_length=8.*at least 9"):
        loader(np.arange(3), batch_size=1, max_length=8, stride=1)


def test_ids_outside_vocabulary():
    with pytest.raises(ValueError, match=r"text_or_ids\[2\]=50257.*\[0, 50257\)"):
        loader(np.array([1, 2, 50257, 4, 5, 6]), batch_size=1, max_length=2, stride=1)
    with pytest.raises(ValueError, match=r"text_or_ids\[0\]=-1"):
        loader(np.array([-1, 2, 3, 4]), batch_size=1, max_length=2, stride=1)


def test_non_integer_ids_are_rejected():
    with pytest.raises(TypeError, match="float"):
        loader(np.ones(10), batch_size=1, max_length=2, stride=1)


def test_stacked_shards_equal_one_reader_with_the_global_batch(corpus_ids):
    # What makes a 2-process run see the same data as a 1-process run.
    kwargs = dict(max_length=8, stride=8, shuffle=True, seed=11, num_epochs=2)
    single = list(loader(corpus_ids, batch_size=12, **kwargs))
    shards = [list(loader(corpus_ids, batch_size=4, shard_index=i, shard_count=3, **kwargs)) for i in range(3)]
    assert all(len(s) == len(single) for s in shards)
    for k, (x, y) in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([s[k][0] for s in shards]), x)
        np.testing.assert_array_equal(np.concatenate([s[k][1] for s in shards]), y)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restore_at_every_batch_across_chunk_boundaries(monkeypatch, num_workers):
    # Chunks of 3 batches, so restores land before, inside and at chunk ends.
    monkeypatch.setattr(data.loader, "CHUNK_TOKENS", 3 * 2 * 5)
    ids = np.random.default_rng(3).integers(0, 50257, size=200)
    kwargs = dict(
        batch_size=2,
        max_length=4,
        stride=3,
        shuffle=True,
        seed=4,
        num_epochs=2,
        drop_last=False,
        num_workers=num_workers,
    )
    full = as_lists(loader(ids, **kwargs))
    it = iter(loader(ids, **kwargs))
    states = [it.get_state()]
    for _ in full:
        next(it)
        states.append(it.get_state())
    with pytest.raises(StopIteration):
        next(it)
    # Worker processes take seconds to start: fewer restore points for them.
    points = [0, 1, 2, 3, 4, 7, len(full) // 2, len(full) - 1, len(full)] if num_workers == 0 else [4, len(full) // 2]
    for k in points:
        resumed = iter(loader(ids, **kwargs))
        resumed.set_state(states[k])
        try:
            assert as_lists(resumed) == full[k:], k
        finally:
            resumed.close()
