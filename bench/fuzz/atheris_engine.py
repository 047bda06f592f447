"""The atheris engine: libFuzzer's coverage feedback decides which mutants to keep, our mutator makes them.

atheris.Fuzz() runs once per process and never returns, so each target runs in a child of
its own (`python -m bench.fuzz.atheris_engine TARGET COUNT SEED STATS_JSON`) that writes its
`Stats` after COUNT inputs and exits. atheris is optional and only a benchmark tool: without it
`available()` is False and bench.fuzz runs the built-in engine, with the same targets and
mutations but no coverage feedback.

The target modules are imported inside `atheris.instrument_imports`, which is what gives
libFuzzer their branch coverage; that is why this module imports them lazily.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.fuzz.engine import Stats
    from bench.fuzz.targets import Target

# Only our code: with tomllib instrumented too, TOML syntax errors (new coverage each) crowded the corpus
INSTRUMENTED = ["agent", "vrrp", "drbd", "nfs"]
LIBFUZZER_SHARE = 0.2  # mutants made by libFuzzer's own byte-level mutator
POOL_SHARE = 0.3  # mutants of a seed or an accepted input rather than of libFuzzer's pick: keeps inputs near valid
LOG_TAIL = 3000


def available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def run_atheris(target: Target, count: int, seed: int) -> Stats:
    from bench.fuzz.engine import Stats

    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as tmp:
        stats, log = Path(tmp) / "stats.json", Path(tmp) / "libfuzzer.log"
        with log.open("wb") as out:
            proc = subprocess.run([sys.executable, "-m", __name__, target.name, str(count), str(seed), str(stats)],
                                  cwd=Path(__file__).resolve().parents[2], stdout=out, stderr=subprocess.STDOUT,
                                  check=False)
        if not stats.exists():
            tail = log.read_text(errors="replace")[-LOG_TAIL:]
            raise RuntimeError(f"atheris worker for {target.name} exited {proc.returncode} without a result:\n{tail}")
        return Stats.from_json(json.loads(stats.read_text()))


def _worker(name: str, count: int, seed: int, stats_path: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from bench.fuzz.engine import Harness, Pool, derive
        from bench.fuzz.targets import TARGETS
    target = TARGETS[name]
    harness, pool = Harness(target, "atheris", seed), Pool(target)
    corpus = stats_path.parent / "corpus"
    corpus.mkdir()
    for i, sample in enumerate(pool.samples):
        (corpus / f"seed-{i}").write_bytes(sample)
    keep_rng = random.Random(seed)
    started = time.perf_counter()

    def test_one_input(data: bytes) -> None:
        if harness.one(data):
            pool.keep(data, keep_rng)
        if harness.stats.inputs >= count:
            harness.stats.seconds = time.perf_counter() - started
            stats_path.write_text(json.dumps(harness.stats.to_json()))
            os._exit(0)  # libFuzzer would otherwise go on; nothing is left to clean up

    def mutate(data: bytes, max_size: int, mutation_seed: int) -> bytes:
        rng = random.Random(mutation_seed)
        r = rng.random()
        if r < LIBFUZZER_SHARE:
            out = atheris.Mutate(data, max_size)
        elif r < LIBFUZZER_SHARE + POOL_SHARE:
            out = pool.draw(rng)
        else:
            out = derive(pool.mutator, target.fixup, data, rng)
        return bytes(out[:max_size])

    atheris.Setup([sys.argv[0], f"-seed={seed}", f"-max_len={target.max_len}", "-rss_limit_mb=4096", "-timeout=60",
                   "-print_final_stats=1", str(corpus)], test_one_input, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
