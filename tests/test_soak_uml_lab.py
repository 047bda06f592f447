"""CI-sized UML soak (issue 15): ``bench.soak --uml`` for a short seeded schedule, 0 violations.

Real DRBD 8.4 and kernel nfsd in user-mode-linux nodes (bench/soak_uml.py): the lab boots in
about half a minute once the image is cached (the first run builds it: minutes), then about 15
faults in 2.5 minutes, each healed and converged again, then every acknowledged file read back.
The seed's first round draws each of the UML lab's fault kinds once.  Asserted: no invariant
violated (never two Primaries and never both mounted in any round the watch read from the
guests' /proc, whatever the fault), every fault kind injected, the watch really sampled (at
least a complete round a second, few rounds with a node not answering), every acknowledged
write read back.  Like the other lab tests it needs root and never skips: a lab that cannot be
built fails the test with the lab's message.
"""

from __future__ import annotations

import os

import pytest

from bench.soak import UML_FAULTS
from bench.soak_uml import run_uml_soak
from tests.test_soak_lab import assert_soak_passed

pytestmark = pytest.mark.lab

SEED = 15
MINUTES = 2.5


def test_uml_soak_never_two_primaries_and_keeps_every_invariant() -> None:
    res = run_uml_soak(SEED, MINUTES, prefix=f"usk{os.getpid() % 10000}")
    assert res.violations["two_primaries"] == 0, "\n".join(res.details)
    assert_soak_passed(res, 300)
    missing = [k for k in UML_FAULTS if not res.faults[k]]
    assert not missing, f"fault kinds never injected: {missing} (injected {res.faults}, skipped {res.skipped})"
    assert res.watch["rounds"] >= res.wall_seconds, res.watch
    assert res.watch["incomplete"] <= 0.05 * res.watch["rounds"], res.watch
