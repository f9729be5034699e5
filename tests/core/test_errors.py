import math

import pytest

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite,
    check_finite_non_negative,
    check_int_at_least,
)


def test_message_names_argument_value_and_what_is_allowed():
    error = InvalidArgumentError("weight_decay", -1.0, "a finite number >= 0")
    assert str(error) == "weight_decay=-1.0 is not allowed: expected a finite number >= 0"
    assert isinstance(error, ValueError)
    assert (error.argument, error.value) == ("weight_decay", -1.0)


@pytest.mark.parametrize("value", [-1e-9, math.nan, math.inf, -math.inf, "3", None, True])
def test_finite_non_negative_rejects(value):
    with pytest.raises(InvalidArgumentError, match="x="):
        check_finite_non_negative("x", value)


@pytest.mark.parametrize("value", [0, 0.0, 3, 1e300])
def test_finite_non_negative_accepts_and_returns_float(value):
    assert check_finite_non_negative("x", value) == float(value)
    assert isinstance(check_finite_non_negative("x", value), float)


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.1", False])
def test_finite_rejects(value):
    with pytest.raises(InvalidArgumentError):
        check_finite("b", value)


def test_finite_accepts_negative():
    assert check_finite("b", -2) == -2.0


@pytest.mark.parametrize("value", [0, -1, 1.0, "2", True])
def test_int_at_least_one_rejects(value):
    with pytest.raises(InvalidArgumentError, match="an integer >= 1"):
        check_int_at_least("batch_size", value, 1)


def test_int_at_least_accepts_minimum():
    assert check_int_at_least("data_seed", 0, 0) == 0
