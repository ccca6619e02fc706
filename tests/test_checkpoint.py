"""Checkpointer: orbax round trips, retention, and damaged-checkpoint fallback."""

from __future__ import annotations

import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_files import corrupt

from jaxembed.train.checkpoint import Checkpointer, CheckpointError

# A failed restore of a damaged step leaves tensorstore reads that call back into
# orbax's closed event loop; the Checkpointer must keep those "unraisable"
# tracebacks quiet (they would bury its warning), so any that escape fail here.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def make_state(scale: float) -> dict:
    rng = np.random.default_rng(int(scale * 10))
    return {
        "params": {
            "token": jnp.asarray(rng.normal(size=(7, 3)) * scale, jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
        },
        "step": jnp.asarray(int(scale * 10), jnp.int32),
        "key": jax.random.key_data(jax.random.key(int(scale * 10))),
    }


def data_iterator(position: int = 0):
    """A real Grain iterator over 0, 1, 2, ... that has handed out ``position`` elements."""
    iterator = iter(grain.MapDataset.range(1000).shuffle(seed=3).to_iter_dataset())
    for _ in range(position):
        next(iterator)
    return iterator


def next_element_after(position: int) -> int:
    return next(data_iterator(position))


def abstract(state: dict):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def assert_tree_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def saved(tmp_path):
    """Steps 1, 2, 3 saved (keep=5), each with its own state and data state."""
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, keep=5)
    states = {s: make_state(float(s)) for s in (1, 2, 3)}
    for s, state in states.items():
        ckpt.save(s, state, data_iterator(10 * s))
    ckpt.close()
    return directory, states


def test_round_trip_restores_state_and_data_state_bitwise(tmp_path):
    state = make_state(1.5)
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save(7, state, data_iterator(42))
    ckpt.wait()
    fresh = data_iterator()
    restored, step = ckpt.restore(abstract(state), fresh)
    ckpt.close()
    assert step == 7
    assert next(fresh) == next_element_after(42)
    assert_tree_equal(restored, state)


def test_state_without_data_iterator_round_trips(tmp_path):
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save(1, make_state(1.0))
    ckpt.wait()
    restored, step = ckpt.restore(abstract(make_state(1.0)))
    ckpt.close()
    assert step == 1
    assert_tree_equal(restored, make_state(1.0))


def test_steps_lists_saves_oldest_first_and_survives_reopen(saved):
    directory, states = saved
    ckpt = Checkpointer(directory, keep=5)
    assert ckpt.steps() == [1, 2, 3]
    fresh = data_iterator()
    restored, step = ckpt.restore(abstract(states[1]), fresh)
    ckpt.close()
    assert step == 3 and next(fresh) == next_element_after(30)
    assert_tree_equal(restored, states[3])


def test_keep_k_keeps_only_the_newest_k_step_dirs(tmp_path):
    directory = tmp_path / "c"
    ckpt = Checkpointer(directory, keep=2)
    for s in range(1, 6):
        ckpt.save(s, make_state(float(s)), data_iterator(s))
    ckpt.close()
    reopened = Checkpointer(directory, keep=2)
    assert reopened.steps() == [4, 5]
    reopened.close()
    assert step_dirs(directory) == ["4", "5"]


def test_empty_directory_raises_checkpoint_error(tmp_path):
    ckpt = Checkpointer(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.restore(abstract(make_state(1.0)))
    ckpt.close()


def test_corrupt_newest_step_falls_back_and_is_renamed_aside(saved, caplog):
    directory, states = saved
    corrupt(directory / "3")
    files_before = sorted(p.relative_to(directory / "3") for p in (directory / "3").rglob("*"))

    ckpt = Checkpointer(directory, keep=5)
    fresh = data_iterator()
    restored, step = ckpt.restore(abstract(states[1]), fresh)
    assert step == 2 and next(fresh) == next_element_after(20)
    assert_tree_equal(restored, states[2])
    assert ckpt.steps() == [1, 2]
    ckpt.close()

    assert "step 3" in caplog.text
    names = step_dirs(directory)
    aside = [n for n in names if n.startswith("3.unreadable-")]
    assert names[:2] == ["1", "2"] and len(aside) == 1 and "3" not in names
    # Moved, never deleted: every file is still there.
    assert sorted(p.relative_to(directory / aside[0]) for p in (directory / aside[0]).rglob("*")) == files_before


def test_read_only_restore_falls_back_without_renaming(saved):
    directory, states = saved
    corrupt(directory / "3")
    before = step_dirs(directory)
    ckpt = Checkpointer(directory, keep=5)
    restored, step = ckpt.restore(abstract(states[1]), read_only=True)
    ckpt.close()
    assert step == 2
    assert_tree_equal(restored, states[2])
    assert step_dirs(directory) == before == ["1", "2", "3"]


def test_every_step_unreadable_raises_and_keeps_the_files(saved):
    directory, states = saved
    for s in (1, 2, 3):
        corrupt(directory / str(s))
    ckpt = Checkpointer(directory, keep=5)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore(abstract(states[1]))
    ckpt.close()
    message = str(info.value)
    assert all(f"step {s}" in message for s in (1, 2, 3)) and "unreadable" in message
    names = step_dirs(directory)
    assert len(names) == 3 and all(".unreadable-" in n for n in names)


def test_all_unreadable_read_only_raises_and_renames_nothing(saved):
    directory, states = saved
    for s in (1, 2, 3):
        corrupt(directory / str(s))
    ckpt = Checkpointer(directory, keep=5)
    with pytest.raises(CheckpointError, match="could be restored"):
        ckpt.restore(abstract(states[1]), read_only=True)
    ckpt.close()
    assert step_dirs(directory) == ["1", "2", "3"]


def test_save_after_fallback_reuses_the_step_number(saved):
    # A resumed run re-saves the step it fell back over; the set-aside copy must not block it.
    directory, states = saved
    corrupt(directory / "3")
    ckpt = Checkpointer(directory, keep=5)
    ckpt.restore(abstract(states[1]), data_iterator())
    ckpt.save(3, states[3], data_iterator(33))
    ckpt.wait()
    fresh = data_iterator()
    restored, step = ckpt.restore(abstract(states[1]), fresh)
    ckpt.close()
    assert step == 3 and next(fresh) == next_element_after(33)
    assert_tree_equal(restored, states[3])
    assert sum(n.startswith("3.unreadable-") for n in step_dirs(directory)) == 1
