"""The benchmark script runs end to end and measures every figure.

Speed itself is not asserted here (a loaded CI machine would make that flaky);
what is checked is behaviour the figures rest on: every figure has samples,
sixteen processes connecting at once start the daemon exactly once, and the
script leaves nothing running.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from helpers import MARKER

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_benchmark_script_measures_every_figure(test_id: str):
    env = {**os.environ, MARKER: test_id}  # the sweeper finds anything it leaves behind
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--runs", "2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    pidfd = hasattr(os, "pidfd_open")
    for key, figure in figures.items():
        if key in ("teardown", "ours"):
            continue  # the exit delay is split at the pidfd wake-up, where there is one
        assert figure["n"] >= 1, key
        assert all(math.isfinite(sample) for sample in figure["samples"]), key
    assert figures["starts"]["samples"] == [1, 1, 1]
    if pidfd:
        # stop() is woken after the daemon's last instruction and returns after that.
        # A stop that finds the daemon gone already is not woken: no split. With
        # two runs on a loaded machine that can be both (the daemon exits while
        # stop() forgets its start record), so the rows may be empty, never uneven.
        assert figures["teardown"]["n"] == figures["ours"]["n"]
        assert all(t >= 0 for t in figures["teardown"]["samples"] + figures["ours"]["samples"])
