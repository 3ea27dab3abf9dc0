"""workers.checks: each check returns what it accepts, and refuses with ``field: expected ..., got ...``."""

import math
import pickle
import subprocess
import sys

import pytest

from workers.checks import (
    CheckError,
    check_at_most,
    check_bool,
    check_choice,
    check_int,
    check_positive_ints,
    check_real,
    describe,
    is_int,
    is_real,
)

NAN, INF = float("nan"), float("inf")


def _refused(check, *args, **kwargs) -> CheckError:
    with pytest.raises(CheckError) as info:
        check(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("value, bounds", [(0, {}), (-5, {}), (2**70, {}), (1, {"minimum": 1}), (7, {"maximum": 7}),
                                           (3, {"minimum": 3, "maximum": 3})])
def test_check_int_accepts_ints_within_bounds(value, bounds):
    assert check_int("n", value, **bounds) is value


@pytest.mark.parametrize("value, bounds, message", [
    (True, {}, "n: expected an int, got True"),
    (False, {"minimum": 0}, "n: expected an int >= 0, got False"),
    (1.0, {}, "n: expected an int, got 1.0"),
    ("3", {}, "n: expected an int, got '3'"),
    (None, {}, "n: expected an int, got None"),
    (NAN, {}, "n: expected an int, got nan"),
    (0, {"minimum": 1}, "n: expected an int >= 1, got 0"),
    (8, {"maximum": 7}, "n: expected an int <= 7, got 8"),
    (9, {"minimum": 1, "maximum": 8}, "n: expected an int in [1, 8], got 9"),
])
def test_check_int_refuses_bools_non_ints_and_values_out_of_bounds(value, bounds, message):
    e = _refused(check_int, "n", value, **bounds)
    assert str(e) == message and isinstance(e, ValueError)
    assert e.field == "n" and e.got is value and e.fields == ("n",)


@pytest.mark.parametrize("value, bounds", [
    (0.5, {}), (-3, {}), (1e308, {}), (0, {"low": 0}), (1, {"low": 0, "high": 1}), (0.5, {"low": 0, "high": 1, "low_open": True,
                                                                                         "high_open": True}),
    (2**70, {"low": 0, "low_open": True}), (-1.0, {"high": 0, "high_open": True}),
])
def test_check_real_accepts_finite_numbers_within_bounds(value, bounds):
    assert check_real("x", value, **bounds) is value


@pytest.mark.parametrize("value, bounds, message", [
    (NAN, {}, "x: expected a finite number, got nan"),
    (INF, {}, "x: expected a finite number, got inf"),
    (-INF, {"high": 0}, "x: expected a finite number <= 0, got -inf"),
    (INF, {"low": 0, "low_open": True}, "x: expected a finite number > 0, got inf"),
    (True, {}, "x: expected a finite number, got True"),
    ("0.5", {}, "x: expected a finite number, got '0.5'"),
    (None, {"low": 0}, "x: expected a finite number >= 0, got None"),
    (0.0, {"low": 0, "low_open": True}, "x: expected a finite number > 0, got 0.0"),
    (-0.1, {"low": 0}, "x: expected a finite number >= 0, got -0.1"),
    (1, {"high": 1, "high_open": True}, "x: expected a finite number < 1, got 1"),
    (1.5, {"low": 0, "high": 1}, "x: expected a number in [0, 1], got 1.5"),
    (0, {"low": 0, "high": 1, "low_open": True}, "x: expected a number in (0, 1], got 0"),
    (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, "x: expected a number in [0.0, 1.0), got 1.0"),
    (NAN, {"low": 0, "high": 1}, "x: expected a number in [0, 1], got nan"),
])
def test_check_real_refuses_nan_inf_bools_and_values_out_of_bounds(value, bounds, message):
    e = _refused(check_real, "x", value, **bounds)
    assert str(e) == message and e.field == "x" and e.got is value


def test_check_choice():
    assert check_choice("mode", "min", ("min", "max")) == "min"
    assert check_choice("mode", "max", ["min", "max"]) == "max"  # any iterable of choices
    e = _refused(check_choice, "mode", "lowest", ("min", "max"))
    assert str(e) == "mode: expected one of min, max, got 'lowest'" and (e.field, e.got) == ("mode", "lowest")
    assert str(_refused(check_choice, "mode", None, ("min", "max"))) == "mode: expected one of min, max, got None"
    assert str(_refused(check_choice, "mode", ["min"], ("min", "max"))) == "mode: expected one of min, max, got ['min']"


def test_check_bool():
    assert check_bool("log", True) is True and check_bool("log", False) is False
    for value in (1, 0, "yes", "true", None):
        e = _refused(check_bool, "log", value)
        assert str(e) == f"log: expected true or false, got {value!r}" and e.got is value


def test_check_at_most_names_both_fields():
    assert check_at_most("truncate", 4, "K", 4) == 4
    e = _refused(check_at_most, "truncate", 5, "K", 4)
    assert str(e) == "truncate: expected at most K = 4, got 5"
    assert (e.field, e.expected, e.got, e.fields) == ("truncate", "at most K = 4", 5, ("truncate", "K"))


def test_check_positive_ints_names_the_first_bad_keyword():
    check_positive_ints(m=1, n=2**40)
    assert str(_refused(check_positive_ints, m=3, n=0, k=-1)) == "n: expected an int >= 1, got 0"
    assert str(_refused(check_positive_ints, m=True)) == "m: expected an int >= 1, got True"
    assert str(_refused(check_positive_ints, m=2.0)) == "m: expected an int >= 1, got 2.0"


def test_predicates():
    assert is_int(3) and is_int(-(2**70)) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_real(3) and is_real(-1e308) and not is_real(NAN) and not is_real(INF) and not is_real(False)
    assert not is_real("1") and not is_real(None)


def test_an_error_moves_to_a_longer_field_name_by_its_parts_and_pickles():
    e = CheckError("truncate", "at most K = 4", 5, also=("K",))
    moved = e.at("fixed.truncate")
    assert str(moved) == describe("fixed.truncate", "at most K = 4", 5) == "fixed.truncate: expected at most K = 4, got 5"
    assert moved.fields == ("fixed.truncate", "K") and moved.got == 5
    copy = pickle.loads(pickle.dumps(e))  # Ray sends a trial's errors between processes
    assert type(copy) is CheckError and str(copy) == str(e)
    assert (copy.field, copy.expected, copy.got, copy.fields) == (e.field, e.expected, e.got, e.fields)
    assert isinstance(e, ValueError)  # callers that catch ValueError still do


def test_messages_are_one_line_with_the_value_as_repr():
    e = _refused(check_choice, "name", "a\nb", ("x",))
    assert "\n" not in str(e) and str(e).endswith("got 'a\\nb'")
    assert math.isnan(_refused(check_real, "x", NAN).got)


def test_checks_import_neither_torch_nor_optuna():
    code = "import sys, workers.checks; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
