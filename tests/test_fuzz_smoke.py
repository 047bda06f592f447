"""CI-sized fuzzing: every `bench.fuzz` target, a few thousand mutants each, and nothing may come out
of a parser but its documented refusal. The full million-input run is `python -m bench.fuzz`."""

from __future__ import annotations

import pytest

from bench.fuzz.engine import run_builtin
from bench.fuzz.targets import TARGETS

COUNT = 5000


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_documented_refusals(name: str) -> None:
    stats = run_builtin(TARGETS[name], COUNT, seed=1)
    assert stats.inputs == COUNT
    assert not stats.unhandled, stats.crashes
    assert stats.accepted and stats.rejected, "the mutants should land on both sides of the parser"


def test_a_seed_replays_the_same_run() -> None:
    first, second = (run_builtin(TARGETS["vrrp"], 500, seed=7) for _ in range(2))
    assert (first.accepted, first.rejected) == (second.accepted, second.rejected)
    assert run_builtin(TARGETS["vrrp"], 500, seed=8).rejected != first.rejected
