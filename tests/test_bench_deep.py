"""The deep benchmark's case names: synthetic, trained and depth-search teachers."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.deep import CASES, TEACHERS_PER_CASE, _parse  # noqa: E402


def test_case_names_say_the_kind_of_teacher():
    assert _parse("relu:6-5-3-1") == ("synthetic", "relu", 6, (5, 3))
    assert _parse("digits-tanh:64-16-16-10") == ("digits", "tanh", 64, (16, 16))
    assert _parse("depth:tanh:6-4-3-1") == ("depth", "tanh", 6, (4, 3))
    assert {_parse(c)[0] for c in CASES} == {"synthetic", "digits", "mnist", "depth"}
    assert TEACHERS_PER_CASE["softplus:8-4-2-1"] == 5 and TEACHERS_PER_CASE["g:8-6-4-2-1"] == 3


@pytest.mark.parametrize("case", ["relu", "relu:6", "relu:6-1", "depth:6-4-1:x:y"])
def test_malformed_cases_fail_before_any_work(case):
    with pytest.raises(ValueError):
        _parse(case)
