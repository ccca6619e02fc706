"""Loader conveniences that must not hide mistakes: state from another loader, len, worker spawn, Encoding."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxembed import data
from jaxembed.text.tokenizer import get_encoding

IDS = np.arange(2000, dtype=np.int32) % 50000


def loader(**overrides):
    kwargs = dict(batch_size=4, max_length=8, stride=8, shuffle=True, seed=0, num_epochs=2)
    return data.create_dataloader(IDS, **{**kwargs, **overrides})


def test_set_state_refuses_a_state_from_a_loader_with_other_settings():
    it = iter(loader())
    next(it)
    state = it.get_state()
    other = iter(loader(batch_size=2, seed=1))
    with pytest.raises(ValueError, match=r"batch_size=4 in the state, 2 here.*seed=0 in the state, 1 here"):
        other.set_state(state)
    same = iter(loader())
    same.set_state(state)  # the same settings restore exactly the next batch
    np.testing.assert_array_equal(next(same)[0], next(it)[0])


def test_len_of_a_finite_loader_counts_its_batches_and_an_endless_one_refuses():
    finite = loader()
    batches = list(finite)
    # 2000 tokens, windows of 8 every 8 -> 249 windows -> 62 full batches per epoch, 2 epochs.
    assert len(finite) == len(batches) == 2 * (len(range(0, 2000 - 8, 8)) // 4)
    with pytest.raises(TypeError, match="forever"):
        len(loader(num_epochs=None))


def test_tokenizer_argument_takes_an_encoding_object():
    enc = get_encoding("gpt2")
    text = "Romeo, Romeo! wherefore art thou Romeo? " * 20
    by_name = next(iter(data.create_dataloader(text, batch_size=2, max_length=4, stride=4, shuffle=False)))
    by_object = next(
        iter(data.create_dataloader(text, batch_size=2, max_length=4, stride=4, shuffle=False, tokenizer=enc))
    )
    np.testing.assert_array_equal(by_name[0], by_object[0])
    np.testing.assert_array_equal(by_name[0][0], enc.encode(text)[:4])


SCRIPT = """
import numpy as np
from jaxembed import data
loader = data.create_dataloader(np.arange(5000, dtype=np.int32), batch_size=4, max_length=8, stride=8, num_workers=2)
print(next(iter(loader))[0].shape)
"""


@pytest.mark.parametrize("how", ["unguarded script", "stdin"])
def test_worker_processes_without_a_main_guard_fail_fast_instead_of_hanging(tmp_path, how):
    if how == "stdin":
        proc = subprocess.run([sys.executable, "-"], input=SCRIPT, capture_output=True, text=True, timeout=120)
    else:
        script = tmp_path / "train_script.py"
        script.write_text(SCRIPT)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "num_workers=2 starts Grain worker processes" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr and "num_workers=0" in proc.stderr


def test_worker_processes_under_a_main_guard_work(tmp_path):
    script = tmp_path / "guarded.py"
    guarded = "def main():\n" + textwrap.indent(SCRIPT, "    ") + '\n\nif __name__ == "__main__":\n    main()\n'
    script.write_text(guarded)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(4, 8)" in proc.stdout


def test_grains_worker_profiling_notice_is_dropped_and_other_absl_warnings_pass():
    # Grain logs this once at import with jaxlib < 0.11 (Colab's 0.7.2); the record is absl's own.
    script = textwrap.dedent(
        """
        import jaxembed.data
        from absl import logging
        logging.warning("Grain multiprocess worker profiling requires jaxlib extension version 448"
                        " or later (jaxlib >= 0.11.0). Current version: 400.")
        logging.warning("a warning that is not grain's notice")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a warning that is not grain's notice" in done.stderr
    assert "worker profiling" not in done.stderr
