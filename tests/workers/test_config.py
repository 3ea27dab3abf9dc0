"""BMOConfig validation: every bad value is a CheckError (a ValueError) naming the field and the value."""

import dataclasses

import pytest

from workers import BMOConfig
from workers.checks import CheckError


@pytest.mark.parametrize(
    "field, value",
    [
        ("K", 0),
        ("K", 2.5),
        ("K", True),
        ("mu", -0.1),
        ("mu", 1.5),
        ("mu", float("nan")),
        ("s0", 0.0),
        ("s_power", 0.0),
        ("s_power", 1.2),
        ("gamma", -1e-3),
        ("outer_steps", -1),
        ("optimizer", "rmsprop"),
        ("hypergrad", "backprop"),
        ("truncate", 0),
        ("restarts", -1),
        ("warm_start", "yes"),
        ("eval_mu", 1.0),
        ("eval_K", 0),
        ("eval_every", 0),
        ("device", "tpu"),
        ("grad_clip", 0.0),
        ("seed", -3),
    ],
)
def test_bad_value_names_field_and_value(field, value):
    with pytest.raises(CheckError) as info:
        BMOConfig(**{field: value})
    e = info.value
    assert e.field == field and e.fields == (field,) and e.got is value
    assert str(e).startswith(f"{field}: expected ") and str(e).endswith(f", got {value!r}")


@pytest.mark.parametrize("field, value, message", [
    ("K", 2.5, "K: expected an int >= 1, got 2.5"),
    ("K", True, "K: expected an int >= 1, got True"),
    ("mu", 1.5, "mu: expected a number in [0, 1], got 1.5"),
    ("s0", float("inf"), "s0: expected a finite number > 0, got inf"),
    ("eval_mu", 1.0, "eval_mu: expected a number in [0, 1), got 1.0"),
    ("optimizer", "rmsprop", "optimizer: expected one of sgd, adam, got 'rmsprop'"),
    ("warm_start", "yes", "warm_start: expected true or false, got 'yes'"),
])
def test_bad_value_messages_say_what_was_expected(field, value, message):
    with pytest.raises(ValueError) as info:
        BMOConfig(**{field: value})
    assert str(info.value) == message


def test_truncate_longer_than_K_is_rejected():
    with pytest.raises(CheckError) as info:
        BMOConfig(K=4, hypergrad="truncated", truncate=5)
    assert str(info.value) == "truncate: expected at most K = 4, got 5"
    assert info.value.fields == ("truncate", "K")
    assert BMOConfig(K=4, hypergrad="unroll", truncate=5).truncate == 5  # only truncated tapes truncate steps


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match="'Kay'"):
        BMOConfig.from_dict({"Kay": 3})
    assert BMOConfig.from_dict({"K": 3}).K == 3


def test_defaults_are_valid_and_eval_steps_defaults_to_K():
    config = BMOConfig(K=7)
    assert config.eval_steps == 7
    assert dataclasses.replace(config, eval_K=30).eval_steps == 30
