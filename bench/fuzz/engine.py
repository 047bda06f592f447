"""Runs a target on many inputs and keeps the score; the built-in engine needs nothing but Python.

The harness is the only place that catches everything: an exception that is not the target's
documented refusal is counted as unhandled, with the input that caused it, and the run goes
on, so one bug does not hide the next and a run always ends with a complete report.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.fuzz.mutate import Mutator
from bench.fuzz.targets import ACCEPTED, Runner, Target

RANDOM_RATE = 0.03  # inputs that are random bytes, no sample behind them
VERBATIM_RATE = 0.02  # unmutated samples: valid input keeps being run
FIXUP_RATE = 0.85  # mutants whose checksum or MAC is made right again
POOL_MAX = 512  # accepted mutants kept as samples to mutate further
SAMPLES_PER_ERROR = 3
SAMPLE_BYTES = 4096


@dataclass
class Stats:
    target: str
    engine: str
    seed: int
    inputs: int = 0
    accepted: int = 0
    seconds: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)
    unhandled: Counter[str] = field(default_factory=Counter)
    crashes: list[dict[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "engine": self.engine, "seed": self.seed, "inputs": self.inputs,
                "accepted": self.accepted, "rejected": dict(self.rejected.most_common()),
                "rejected_total": sum(self.rejected.values()), "unhandled": dict(self.unhandled),
                "unhandled_total": sum(self.unhandled.values()), "seconds": round(self.seconds, 3),
                "inputs_per_s": round(self.rate, 1), "crashes": self.crashes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stats:
        return cls(d["target"], d["engine"], d["seed"], d["inputs"], d["accepted"], d["seconds"],
                   Counter(d["rejected"]), Counter(d["unhandled"]), d["crashes"])


class Harness:
    """One target's runner wrapped so that every outcome is counted and nothing escapes."""

    def __init__(self, target: Target, engine: str, seed: int) -> None:
        self.run: Runner = target.start()
        self.stats = Stats(target.name, engine, seed)

    def one(self, data: bytes) -> bool:
        """Runs one input; True when the target accepted it."""
        self.stats.inputs += 1
        try:
            label = self.run(data)
        except Exception as e:
            self._crashed(data, e)
            return False
        if label == ACCEPTED:
            self.stats.accepted += 1
            return True
        self.stats.rejected[label] += 1
        return False

    def _crashed(self, data: bytes, e: Exception) -> None:
        name = type(e).__name__
        self.stats.unhandled[name] += 1
        if self.stats.unhandled[name] <= SAMPLES_PER_ERROR:
            where = traceback.extract_tb(e.__traceback__)[-1]
            self.stats.crashes.append({"error": f"{name}: {str(e)[:300]}", "where": f"{where.filename}:{where.lineno}"
                                       f" in {where.name}", "input_hex": data[:SAMPLE_BYTES].hex(),
                                       "input_len": str(len(data))})


def derive(mutator: Mutator, fixup: Callable[[bytes], bytes] | None, data: bytes, rng: random.Random) -> bytes:
    """A mutant of `data`, mostly with its integrity check restored so the parser looks further."""
    out = mutator.mutate(data, rng)
    return fixup(out) if fixup is not None and rng.random() < FIXUP_RATE else out


class Pool:
    """The seeds plus accepted mutants (seeds are never evicted): deeper valid inputs to start from."""

    def __init__(self, target: Target) -> None:
        self.samples = target.seeds()
        if not self.samples:
            raise ValueError(f"target {target.name} has no seed samples")
        self.seeds = len(self.samples)
        self.fixup = target.fixup
        self.mutator = Mutator(self.samples, target.text, target.max_len)

    def draw(self, rng: random.Random) -> bytes:
        r = rng.random()
        if r < RANDOM_RATE:
            return self.mutator.random_bytes(rng)
        if r < RANDOM_RATE + VERBATIM_RATE:
            return self.samples[rng.randrange(self.seeds)]
        return derive(self.mutator, self.fixup, rng.choice(self.samples), rng)

    def keep(self, data: bytes, rng: random.Random) -> None:
        if data in self.samples[: self.seeds]:
            return
        if len(self.samples) < self.seeds + POOL_MAX:
            self.samples.append(data)
        else:
            self.samples[rng.randrange(self.seeds, len(self.samples))] = data


def run_builtin(target: Target, count: int, seed: int) -> Stats:
    """`count` inputs from the seeded mutator; the same seed gives the same inputs and the same counts."""
    rng = random.Random(f"{seed}/{target.name}")
    harness, pool = Harness(target, "builtin", seed), Pool(target)
    start = time.perf_counter()
    for _ in range(count):
        data = pool.draw(rng)
        if harness.one(data):
            pool.keep(data, rng)
    harness.stats.seconds = time.perf_counter() - start
    return harness.stats
