"""The scalar checks shared by the configs: every check raises the package's InputError."""

import math

import numpy as np
import pytest

from ecflow._checks import check_in_range, check_int, check_number
from ecflow.errors import InputError, InputTypeError


def test_check_int_accepts_integers_and_rejects_the_rest():
    assert check_int(np.int64(3), "n") == 3
    with pytest.raises(InputTypeError, match="n must be an integer"):
        check_int(2.0, "n")
    with pytest.raises(InputTypeError):
        check_int(True, "n")
    with pytest.raises(InputError, match="n must be a positive integer, got 0"):
        check_int(0, "n")
    with pytest.raises(InputError, match=">= 2"):
        check_int(1, "n", 2)


def test_check_number_rejects_non_finite_and_non_positive():
    assert check_number(2, "x") == 2.0
    with pytest.raises(InputTypeError, match="x must be a number"):
        check_number("2", "x")
    with pytest.raises(InputError, match="finite"):
        check_number(math.inf, "x")
    with pytest.raises(InputError, match="positive"):
        check_number(0.0, "x", positive=True)


@pytest.mark.parametrize("value", [0.0, -1.0, 1.5, math.nan, math.inf])
def test_check_in_range_rejects_values_outside_the_interval(value):
    with pytest.raises(InputError, match=r"gamma must be in \(0, 1\], got"):
        check_in_range(value, "gamma", 0.0, 1.0)


def test_check_in_range_accepts_the_upper_bound_and_names_the_unit():
    assert check_in_range(1, "gamma", 0.0, 1.0) == 1.0
    with pytest.raises(InputTypeError, match="beta_deg must be a number"):
        check_in_range("7", "beta_deg", 0.0, 90.0, unit=" degrees")
    with pytest.raises(InputError, match=r"\(0, 90\] degrees"):
        check_in_range(91, "beta_deg", 0.0, 90.0, unit=" degrees")


def test_input_errors_are_value_and_type_errors_for_old_callers():
    assert issubclass(InputError, ValueError)
    assert issubclass(InputTypeError, InputError) and issubclass(InputTypeError, TypeError)
