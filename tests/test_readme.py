"""The README's benchmark figures are the result files' figures, and ``make bench`` knows
every result file."""

import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

# A number as written in prose: 26, 0.41, 3.0e-16, 1e-3 (not the digits inside a word).
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w.]*\d)(\s*min\b)?")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _prose_numbers(text: str) -> list[tuple[str, bool]]:
    """``(number, in minutes)`` for every figure of ``text``; links and code are names."""
    text = re.sub(r"\[[^\]]*\]\([^)]*\)", " ", text)
    text = re.sub(r"`[^`]*`", " ", text)
    return [(m.group(1), bool(m.group(2))) for m in _NUMBER.finditer(text)]


def _file_numbers(value, out: list[float]) -> list[float]:
    """Every number of a JSON document: its values, and the figures inside its strings and keys."""
    if isinstance(value, bool) or value is None:
        return out
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out.append(float(value))
    elif isinstance(value, str):
        out.extend(float(m.group(1)) for m in _NUMBER.finditer(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _file_numbers(k, out)
            _file_numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _file_numbers(v, out)
    return out


def _shown_as(value: float, text: str) -> bool:
    """Whether ``value`` written with the precision of ``text`` reads ``text``."""
    target = float(text)
    if "e" in text:
        digits = len(text.split("e")[0].split(".")[1]) if "." in text else 0
        return float(f"{value:.{digits}e}") == target
    digits = len(text.split(".")[1]) if "." in text else 0
    return round(value, digits) == target


def _unmatched(numbers, found) -> list[str]:
    missing = []
    for text, minutes in numbers:
        candidates = [v / 60 for v in found] if minutes else found
        if not any(_shown_as(v, text) for v in candidates):
            missing.append(text + (" min" if minutes else ""))
    return missing


@pytest.fixture(scope="module")
def file_numbers():
    found: list[float] = []
    for path in sorted(RESULTS.glob("*.json")):
        _file_numbers(json.loads(path.read_text()), found)
    return sorted(set(found))


def test_every_benchmark_figure_of_the_readme_is_in_a_result_file(file_numbers):
    section = _section((ROOT / "README.md").read_text(), "Benchmarks")
    numbers = _prose_numbers(section)
    assert len(numbers) > 50  # the section was found and read
    missing = _unmatched(numbers, file_numbers)
    assert not missing, f"README benchmark figures found in no benchmarks/results file: {missing}"


def test_the_check_catches_a_figure_no_file_holds(file_numbers):
    invented = _prose_numbers("wall 58.9, 123.456 s, RMSE 7.77e-17, 3.14159 min, 12 of 31337")
    assert _unmatched(invented, file_numbers) == ["123.456", "7.77e-17", "3.14159 min", "31337"]
    assert _unmatched(_prose_numbers("in 49.6 min, RMSE 3.0e-16"), file_numbers) == []


def test_the_headline_figures_are_in_their_file(file_numbers):
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    recover = _file_numbers(json.loads((RESULTS / "recover.json").read_text()), [])
    assert _unmatched([n for n in _prose_numbers(head) if n[0] != "2024"], recover) == []


def test_make_bench_knows_every_result_file():
    from benchmarks.run import RESULTS as REPRODUCTIONS

    names = {r.name for r in REPRODUCTIONS}
    assert names == {p.stem for p in RESULTS.glob("*.json")}
    for rep in REPRODUCTIONS:
        assert rep.seconds() is not None and rep.seconds() > 0, rep.name
        assert rep.commands and all(cmd for cmd in rep.commands)


def test_table1_records_its_command_as_typed(tmp_path):
    from benchmarks.table1 import typed_command

    t, out, rep = tmp_path / "t.h5", tmp_path / "rec.h5", tmp_path / "rep.json"
    command = ["recover", "--teacher", str(t), "--rho", "4", "--out", str(out), "--report",
               str(rep), "--workers", "2"]
    assert typed_command(command, (t, out, rep)) == (
        "ecflow recover --teacher t.h5 --rho 4 --out rec.h5 --report rep.json --workers 2")
    for case in json.loads((RESULTS / "table1.json").read_text())["cases"].values():
        assert case["command"].startswith("ecflow recover --teacher t.h5 --rho 4 --out rec.h5 "
                                          "--report rep.json"), case["command"]
