import time, sys
from tests.lab.netns import NetnsLab, CLIENT
from tests.lab.ganesha_agents import GaneshaAgents, EXPORT
from tests.lab.nfsclient import NfsWriter
with NetnsLab("gtry", nodes=("a", "b")) as lab:
    g = GaneshaAgents(lab)
    g.start()
    print("a serving; acquire ms", g.acquire_ms("a"))
    w = NfsWriter(lab, CLIENT, "192.0.2.100", export=g.disk.path(EXPORT)).start()
    assert w.wait_acked(20, timeout=20), (w.errors[-5:], w.stderr_text())
    t0 = time.monotonic()
    took = g.stop("a")
    print("a stopped in", took)
    g.wait_serving("b", 20)
    print("b acquire ms", g.acquire_ms("b"))
    r = w.wait_first_ack_after(t0, 30); print("resumed after", r)
    w.wait_acked(20, timeout=20, after=t0 + (r or 0))
    print(g.agents["a"].log()[-2500:])
    g.agents["a"].start()
    time.sleep(3)
    m = g.serving(); print("serving", m)
    other = "b" if m == ["a"] else "a"
    t0 = time.monotonic()
    g.crash(m[0])
    g.wait_serving(other, 20)
    r = w.wait_first_ack_after(t0, 30); print("resumed after crash", r)
    w.wait_acked(20, timeout=20, after=t0 + (r or 0))
    w.stop()
    print("max gap", w.max_gap(), "acks", len(w.acks), "errors", len(w.errors))
    v = w.verify(); print("verify", v.passed, v.describe())
    print(g.agents[other].log()[-3000:])
