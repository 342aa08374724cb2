"""``python -m ecflow.demo`` (``make demo``): a full Expand-and-Cluster recovery in a few minutes.

Draws the paper's synthetic teacher with the asymmetric activation g, ``d_in = 4``, ``r = 4``
hidden neurons (appendix A.4), and recovers it from its input-output behaviour with students
overparameterised by ``ρ = 4``, through the same commands a user types::

    ecflow teacher synthetic --d-in 4 --r 4 --activation g --seed 0 --out demo-out/teacher.h5
    ecflow recover --teacher demo-out/teacher.h5 --rho 4 --out demo-out/recovered.h5 \\
        --report demo-out/report.json --plots demo-out/plots ...

It runs with the defaults of ``ecflow recover`` (10 students, 30k queries): students stop at
near-zero loss, creeping ones are given up early, and the expansion stops once γN students have
converged, so the whole recovery takes a minute or two on two cores; ``ecflow recover --help``
lists the options. The terminal shows the report: recovered size, RMSE on training and fresh queries,
the distance of every recovered neuron to its teacher neuron and the per-neuron certificates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ecflow.cli import main as cli_main

OUT = Path("demo-out")

DEMO_ARGS = ["--workers", "2"]


def _run(argv: list[str]) -> int:
    try:
        cli_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main() -> int:
    """Run the demo; returns the exit code of the recovery."""
    OUT.mkdir(exist_ok=True)
    teacher = OUT / "teacher.h5"
    print("ecflow demo: recover a synthetic g teacher (d_in 4, r 4) with students of width 16")
    code = _run([
        "teacher", "synthetic", "--d-in", "4", "--r", "4", "--activation", "g", "--seed", "0",
        "--out", str(teacher),
    ])
    if code:
        return code
    code = _run([
        "recover", "--teacher", str(teacher), "--rho", "4", "--out", str(OUT / "recovered.h5"),
        "--report", str(OUT / "report.json"), "--plots", str(OUT / "plots"), *DEMO_ARGS,
    ])
    if code == 0:
        print(f"report: {OUT / 'report.json'}, figures: {OUT / 'plots'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
