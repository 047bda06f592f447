"""CI-sized soak (issue 15): bench.soak for about two minutes with a fixed seed, 0 violations.

The full run is `python -m bench.soak` (10 minutes, README "Benchmarks"); this one keeps every
fault kind in play with a seed whose schedule draws each of them at least once in two minutes,
and asserts no invariant was violated. Bounds are the soak's own (generous: recovery within
60 s of each fault).
"""

from __future__ import annotations

import os

import pytest

from bench.soak import FAULTS, Result, print_report, run_soak

pytestmark = pytest.mark.lab

SEED = 15
MINUTES = 2.0


def assert_soak_passed(res: Result, min_acked: int) -> None:
    """What every CI soak asserts (tests/test_soak_uml_lab.py too): the report printed, no
    violation, and every acknowledged write read back."""
    print_report(res)
    assert res.ok, "\n".join(res.details)
    assert res.writes["acked"] > min_acked and res.writes["verified_ok"] == res.writes["acked"], res.writes


def test_two_minute_soak_keeps_every_invariant() -> None:
    res = run_soak(SEED, MINUTES, prefix=f"sc{os.getpid() % 10000}")
    assert sum(res.faults.values()) >= 8, f"too few faults injected: {res.faults} (skipped {res.skipped})"
    assert_soak_passed(res, 100)
    assert set(res.faults) == set(FAULTS)
