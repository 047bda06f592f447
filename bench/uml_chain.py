"""The acquire chain on the UML lab, per step: MASTER decided -> VIP up, medians over takeovers.

Real DRBD 8.4 and kernel nfsd in user-mode-linux nodes a and b (tests/lab/uml_agents.py), the
whole chain: DRBD promote -> mount -> NFS state folder -> kernel nfsd -> VIP. Each takeover is a
planned switch (`failoverctl handover` on the master), so the data is in sync and the measure is
the acquiring node's own chain, as its agent logs it ("<step> acquire done in N ms" and "became
MASTER ... (N ms after the transition)").

`--mode cold` (the default) makes every takeover land on a backup as it is after a boot: before
each handover the backup's agent is stopped, its NFS daemons stopped, the nfsd filesystem
unmounted and the nfsd module unloaded, and then its agent started again. That is the case
that matters (a backup that never served since it booted); `--mode warm` leaves whatever the
backup's earlier terms left loaded.

    python -m bench.uml_chain                 # 6 takeovers, cold
    python -m bench.uml_chain --reps 2 --mode warm
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

from tests.lab.lock import hold_lab_lock
from tests.lab.netns import wait_until
from tests.lab.uml_agents import StorageLab, UmlAgent

STEPS = ("drbd", "mount", "nfs_state", "nfs", "vip")
STEP_DONE = re.compile(r" INFO (\w+) acquire done in ([\d.]+) ms")
NFS_PARTS = re.compile(r" nfs acquire done in [\d.]+ ms: .*\(ms: (.*)\)$", re.M)
SERVING = re.compile(r"became MASTER: .*\(([\d.]+) ms after the transition\)")

# Stop what a node's earlier serving left loaded (run in the guest; PIDs read from /proc, one by one)
_COLD = r"""
for p in /proc/[0-9]*; do
  case "$(cat "$p/comm" 2>/dev/null)" in rpcbind|rpc.statd|rpc.mountd|nfsdcld) kill "${p#/proc/}" ;; esac
done
sleep 0.3
umount /proc/fs/nfsd 2>/dev/null
umount /run/rpc_pipefs 2>/dev/null
modprobe -r nfsd 2>/dev/null
grep -q '^nfsd ' /proc/modules && echo "nfsd still loaded" >&2
exit 0
"""


def acquire_of(log: str) -> dict[str, float]:
    """The step durations and the total of the last acquire in ``log`` (after its last `-> MASTER`)."""
    served = list(SERVING.finditer(log))
    if not served:
        return {}
    last = served[-1]
    begin = max(0, log.rfind("-> MASTER", 0, last.start()))
    found = {name: float(ms) for name, ms in STEP_DONE.findall(log[begin:last.end()])}
    found["total"] = float(last.group(1))
    return found


def cold(agent: UmlAgent) -> None:
    """The backup as after a boot: agent stopped, NFS daemons gone, nfsd unloaded; agent started again."""
    agent.terminate()
    agent.node.sh(_COLD, timeout=60)
    agent.start()
    if not wait_until(lambda: agent.vrrp_state() == "BACKUP", 30, 0.3):
        raise AssertionError(f"{agent.node.name} did not become BACKUP again:\n{agent.log()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=6, help="takeovers measured (default 6)")
    ap.add_argument("--mode", choices=("cold", "warm"), default="cold")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds a new backup is left alone before the next")
    ap.add_argument("--json", action="store_true", help="print the samples as JSON too")
    args = ap.parse_args(argv)
    hold_lab_lock("bench.uml_chain")
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    with StorageLab("umlchain") as lab:
        _ = lab.lab.image
        lab.setup()
        lab.start_agents(first="a")
        first = acquire_of(lab.agents["a"].log())
        print(f"a's first acquire at agent start: {json.dumps(first)}", flush=True)
        master, backup = "a", "b"
        for i in range(args.reps):
            a, b = lab.agents[master], lab.agents[backup]
            if not wait_until(lambda b=b: b.vrrp_state() == "BACKUP", 30, 0.3):  # type: ignore[misc]
                raise AssertionError(f"{backup} is not BACKUP:\n{b.log()[-2000:]}")
            if args.mode == "cold":
                cold(b)
            time.sleep(args.settle)
            mark = len(b.log())
            answer = a.ctl("handover", timeout=120).stdout
            if "released" not in answer:
                raise AssertionError(f"handover on {master}: {answer}")
            lab.wait_serving(backup, 60, since=mark)
            lab.wait_idle(master, 30)
            got = acquire_of(b.log()[mark:])
            samples.append(got)
            parts = NFS_PARTS.findall(b.log()[mark:])
            print(f"takeover {i + 1} ({master} -> {backup}): " + ", ".join(f"{k} {v:g}" for k, v in got.items())
                  + (f"; nfs parts (ms): {parts[-1]}" if parts else ""), flush=True)
            if i == 0:  # how nfsd started, in the kernel's words (client tracking, grace)
                print("  " + b.node.sh("dmesg | grep -i -e NFSD -e nfsdcld | tail -4").stdout.strip().replace(
                    "\n", "\n  "), flush=True)
            master, backup = backup, master
    print(f"\nUML acquire chain, {args.mode} backup, {len(samples)} takeovers "
          f"({time.monotonic() - t0:.0f} s with the lab setup); ms from MASTER decided:")
    print(f"{'step':<10} {'median':>8} {'min':>8} {'max':>8}")
    for key in (*STEPS, "total"):
        values = [s[key] for s in samples if key in s]
        if values:
            print(f"{key:<10} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}")
    if args.json:
        print(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
