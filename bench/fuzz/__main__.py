"""Fuzz every parser of outside input and report, per target, what became of the inputs.

    python -m bench.fuzz                          # 1,000,000 inputs per target
    python -m bench.fuzz --target vrrp --count 5000 --seed 7 --json /tmp/fuzz.json

Exit status 1 when any target raised something other than its documented refusal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from bench.fuzz import atheris_engine
from bench.fuzz.engine import Stats, run_builtin
from bench.fuzz.targets import REPO, TARGETS

DEFAULT_JSON = REPO / "bench" / "results" / "fuzz.json"


def _engine(choice: str) -> str:
    if choice == "auto":
        return "atheris" if atheris_engine.available() else "builtin"
    if choice == "atheris" and not atheris_engine.available():
        raise SystemExit("--engine atheris: atheris is not installed (pip install atheris)")
    return choice


def _table(results: list[Stats]) -> str:
    rows = ["| target | engine | inputs | accepted | rejected (by type) | unhandled | inputs/s |",
            "|---|---|---|---|---|---|---|"]
    for s in results:
        rejected = ", ".join(f"{label} {n:,}" for label, n in sorted(s.rejected.items()))
        unhandled = ", ".join(f"{name} {n:,}" for name, n in sorted(s.unhandled.items())) or "0"
        rows.append(f"| {s.target} | {s.engine} | {s.inputs:,} | {s.accepted:,} | {rejected} | {unhandled} "
                    f"| {s.rate:,.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable; default: all")
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="positive; the same seed replays the same run")
    parser.add_argument("--engine", choices=("auto", "builtin", "atheris"), default="auto",
                        help="auto: atheris when installed (coverage-guided), else the built-in seeded mutator")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"summary file (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    if args.count < 1 or args.seed < 1:
        parser.error("--count and --seed must be positive")
    engine = _engine(args.engine)
    results = []
    for name in args.target or list(TARGETS):
        target = TARGETS[name]
        print(f"{name}: {args.count:,} inputs ({engine}) into {target.what} ...", file=sys.stderr, flush=True)
        run = atheris_engine.run_atheris if engine == "atheris" else run_builtin
        results.append(run(target, args.count, args.seed))
    print(_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": datetime.date.today().isoformat(), "count": args.count,
                                     "seed": args.seed, "engine": engine,
                                     "targets": [s.to_json() for s in results]}, indent=1) + "\n")
    print(f"summary: {args.json}", file=sys.stderr)
    return 1 if any(s.unhandled for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
