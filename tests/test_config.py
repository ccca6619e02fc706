"""Every field of the config schema has a rule, checked in one place (config.validate)."""

from __future__ import annotations

import math

import ml_collections
import pytest

from jaxembed.config import FIELD_RULES, named_config, validate
from jaxembed.train.plan import plan

# One value per field that must be refused, chosen from what the field means (not read from the
# rules): the replays first (gradient ascent, a learning rate that never moves, betas
# past 1 ...), then one per remaining field. A field added to configs/default.py without a line
# here fails test_every_schema_field_has_a_rule_and_a_bad_value.
BAD = {
    "optim.grad_clip": [-1.0, 0.0, math.nan],
    "optim.b1": [1.5, -0.1],
    "optim.b2": [1.5],
    "optim.warmup_steps": [-5],
    "optim.weight_decay": [-1.0, math.inf],
    "optim.decay_embeddings": ["no"],
    "optim.final_lr_fraction": [-2.0, 1.5],
    "optim.learning_rate": [0.0, math.nan],
    "report.num_neighbors": [0],
    "report.pca_tokens": [-3],
    "report.projector_tokens": [0],
    "report.probe_tokens": ["thou", (" thou", "")],
    "data.val_fraction": [1.5, 0.0],
    "seed": [-1, 1.5],
    "data.corpus": ["shakespeare"],
    "data.text": [""],
    "data.tokens": ["  "],
    "data.val_tokens": [""],
    "data.tokenizer": ["gpt5"],
    "data.max_length": [0],
    "data.stride": [-2],
    "data.batch_size": [0, True],
    "data.num_workers": [-1],
    "model.features": [0],
    "model.init_stddev": [-0.1, math.nan],
    "model.dtype": ["float8"],
    "model.param_dtype": ["int8"],
    "model.vocab_multiple": [0],
    "model.active_vocab": ["yes"],
    "model.num_layers": [-1],
    "model.num_heads": [0],
    "model.position": ["rotary", "", None, 1],
    "model.init_from": ["gpt-2", "GPT2", None, True],
    "model.loss_tile_tokens": [-5],
    "train.steps": [0],
    "train.log_every": [0],
    "train.eval_every": [-1],
    "train.eval_batches": [0],
    "train.checkpoint_every": [0],
    "train.keep_checkpoints": [0],
    "train.tensorboard": ["no"],
    "train.profile_steps": ["15,10"],
    "mesh.data": [0, -2],
    "mesh.model": [0],
    "mesh.logical_axis_rules": [(("batch",),)],
}


def schema_fields(config, prefix: str = "") -> list[str]:
    fields = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            fields += schema_fields(value, f"{prefix}{name}.")
        else:
            fields.append(prefix + name)
    return fields


def with_value(path: str, value):
    # Through a plain dict: the schema's type lock would refuse some bad values before validate sees them.
    tree = named_config("tiny").to_dict()
    section, _, name = path.rpartition(".")
    (tree[section] if section else tree)[name] = value
    return ml_collections.ConfigDict(tree)


def test_every_schema_field_has_a_rule_and_a_bad_value():
    fields = set(schema_fields(named_config("default")))
    assert set(FIELD_RULES) == fields
    assert set(BAD) == fields
    print(f"{len(FIELD_RULES)} fields, each with a rule")


@pytest.mark.parametrize(("path", "value"), [(p, v) for p, values in BAD.items() for v in values])
def test_a_bad_value_is_refused_naming_the_field(path, value):
    with pytest.raises(ValueError) as info:
        validate(with_value(path, value))
    assert str(info.value).startswith(f"{path}="), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["tiny", "default", "gpt2_small"])
def test_the_named_configs_pass(name):
    validate(named_config(name))


@pytest.mark.parametrize(
    ("path", "value"),
    [("model.loss_tile_tokens", None), ("model.loss_tile_tokens", 0), ("mesh.data", -1), ("mesh.data", 2),
     ("data.text", None), ("optim.weight_decay", 0.0), ("optim.final_lr_fraction", 0.0), ("optim.b1", 0.0)],
)  # fmt: skip
def test_edge_values_that_mean_something_pass(path, value):
    validate(with_value(path, value))


def test_heads_that_do_not_divide_the_width_name_both_flags():
    config = with_value("model.features", 30)
    with pytest.raises(ValueError, match=r"--config\.model\.num_heads or --config\.model\.features"):
        validate(config)


def test_plan_refuses_what_train_refuses():
    config = with_value("data.val_fraction", 1.5)
    with pytest.raises(ValueError, match=r"^data\.val_fraction=1\.5 is not allowed"):
        plan(config, vocab_size=1000)


def gpt2_start(**fields):
    """The tiny config set up to start from GPT-2's tables, with ``fields`` ("section.name": value) changed."""
    config = with_value("model.init_from", "gpt2")
    config.model.features = 768
    for path, value in fields.items():
        section, name = path.split(".")
        config[section][name] = value
    return config


def test_gpt2_start_passes_with_gpt2_shapes():
    validate(gpt2_start())
    validate(gpt2_start(**{"data.max_length": 1024}))
    # Schemes without a position table take the token table only: any length.
    validate(gpt2_start(**{"model.position": "sinusoidal", "data.max_length": 2048}))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"model.features": 32}, r"^model\.init_from='gpt2' needs model\.features=768 .*but model\.features=32"),
        ({"data.max_length": 1025}, r"^model\.init_from='gpt2' with model\.position='learned' .*data\.max_length=1025"),
        ({"model.active_vocab": True}, r"^model\.init_from='gpt2' needs model\.active_vocab=False.*=True"),
        ({"data.tokenizer": "cl100k_base"}, r"^model\.init_from='gpt2' needs data\.tokenizer='gpt2'.*'cl100k_base'"),
    ],
)  # fmt: skip
def test_gpt2_start_refuses_what_gpt2_tables_cannot_fill(fields, expected):
    with pytest.raises(ValueError, match=expected) as info:
        validate(gpt2_start(**fields))
    assert "\n" not in str(info.value)
    # The same settings without GPT-2's tables are fine.
    config = gpt2_start(**fields)
    config.model.init_from = "none"
    validate(config)


def test_init_from_is_not_refused_on_resume():
    from jaxembed.train.workdir import resume_rule

    assert resume_rule("model.init_from") == "notice"  # read on a fresh start only; the change is recorded
    assert resume_rule("model.features") == "refuse"
