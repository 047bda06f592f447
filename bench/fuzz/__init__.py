"""Fuzzing of every parser of outside input: `python -m bench.fuzz`."""
