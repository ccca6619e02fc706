"""JAX's persistent compilation cache under ``jaxembed train``: written once, reused by a re-run, off on request."""

from __future__ import annotations

import collections
import pathlib

from run_files import jaxembed

from jaxembed.config import CONFIG_DIR


def train(workdir: pathlib.Path, text_path: pathlib.Path, env: dict):
    args = ["train", "--config", str(CONFIG_DIR / "tiny.py"), "--workdir", str(workdir), "--text", str(text_path)]
    args += ["--no-progress", "--config.train.steps=3", "--config.train.eval_every=3", "--config.train.eval_batches=1"]
    args += ["--config.train.tensorboard=False", "--config.data.batch_size=2", "--config.data.max_length=8"]
    done = jaxembed(args, env)
    assert done.returncode == 0, done.stderr
    return done


def entries(cache: pathlib.Path) -> set[str]:
    return {p.name for p in cache.glob("*-cache")}


def program_names(cache: pathlib.Path) -> collections.Counter:
    # JAX names each entry "jit_<function>-<key>-cache".
    return collections.Counter(name.split("-")[0].removeprefix("jit_") for name in entries(cache))


def test_a_rerun_loads_every_program_from_the_cache(tmp_path, text_path, env):
    cache = tmp_path / "xla"
    env = {**env, "JAXEMBED_COMPILATION_CACHE": str(cache)}
    train(tmp_path / "first", text_path, env)
    written = entries(cache)
    assert len(written) >= 2, sorted(cache.iterdir())  # at least the train and eval steps
    # Each program is traced, lowered and fetched anew by every run: a whole run makes a dozen, not one
    # per eager operation (the schedule's, a copy per parameter, the shuffled table's gather: 35 before).
    names = program_names(cache)
    assert names["train_step"] == names["eval_step"] == names["schedule"] == 1, names
    assert not {"copy", "cos", "gather", "stack"} & set(names), names
    assert sum(names.values()) <= 12, names
    train(tmp_path / "second", text_path, env)
    assert entries(cache) == written  # the same programs: nothing compiled anew


def test_the_cache_is_off_when_asked_and_defaults_to_jaxembeds_cache_dir(tmp_path, text_path, env):
    train(tmp_path / "off", text_path, {**env, "JAXEMBED_COMPILATION_CACHE": "off"})
    assert not (pathlib.Path(env["JAXEMBED_CACHE"]) / "xla").exists()
    home = tmp_path / "jaxembed-cache"
    home.mkdir()  # the runner starts jaxembed in the corpus cache folder
    default_env = {k: v for k, v in env.items() if k != "JAXEMBED_COMPILATION_CACHE"} | {"JAXEMBED_CACHE": str(home)}
    train(tmp_path / "on", text_path, default_env)
    assert entries(home / "xla")
