"""Entry point of ``make bench``: run every ``bench_*`` function of every ``benchmarks/*.py``.

Each benchmark module writes its own file under ``benchmarks/results/``; a bench function is
called with its defaults (which are sized to finish in minutes on a 2-core machine; see each
module's docstring for the options of a full run). ``--only engine,sweep`` restricts the
modules, ``--list`` prints what would run.

Usage::

    python -m benchmarks.run [--only MODULE[,MODULE...]] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(only: set[str] | None = None) -> list[tuple[str, object]]:
    """``(qualified name, function)`` of every ``bench_*`` function, modules in name order."""
    found = []
    for path in sorted(HERE.glob("*.py")):
        name = path.stem
        if name in ("run", "__init__") or name.startswith("_"):
            continue
        if only is not None and name not in only:
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        for fname, fn in inspect.getmembers(module, inspect.isfunction):
            if fname.startswith("bench_") and fn.__module__ == module.__name__:
                found.append((f"{name}.{fname}", fn))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated module names")
    parser.add_argument("--list", action="store_true", help="list the bench functions and exit")
    args = parser.parse_args(argv)
    only = {m.strip() for m in args.only.split(",")} if args.only else None
    benches = discover(only)
    if args.list:
        for name, _ in benches:
            print(name)
        return 0
    failed = []
    for name, fn in benches:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # one failing benchmark must not hide the others' results
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            failed.append(name)
        print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
