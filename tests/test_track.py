"""Reachability tracking decisions (agent.track), table-driven and with hypothesis; no I/O."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import CheckConfig, ConfigError, TrackConfig, parse
from agent.probes import echo_reply_program, echo_request, parse_echo_reply
from agent.track import Target, Tracker
from vrrp.rawsock import run_program

W1, W2 = IPv4Address("192.0.2.254"), IPv4Address("198.51.100.254")
BASE = '[vrrp]\ninterface = "eth0"\nvrid = 51\npriority = 100\nvips = ["192.0.2.100/24"]\n'


def tracker(witnesses: tuple[IPv4Address, ...] = (W1,), min_reachable: int = 1, rise: int = 2, fall: int = 3,
            checks: tuple[CheckConfig, ...] = ()) -> Tracker:
    return Tracker(TrackConfig(witnesses=witnesses, rise=rise, fall=fall, min_reachable=min_reachable,
                               checks=checks))


@pytest.mark.parametrize(("results", "verdicts"), [
    ("", []),
    ("1", [None]),                    # one answer is not yet `rise`
    ("11", [None, True]),
    ("0", [False]),                   # no verdict + a failure: down at once (unknown counts as down anyway)
    ("110", [None, True, True]),      # one loss does not move a reachable witness
    ("11000", [None, True, True, True, False]),
    ("1100100", [None, True, True, True, True, True, True]),  # never 3 failures in a row
    ("000110", [False, False, False, False, True, True]),
    ("00010", [False, False, False, False, False]),
])  # fmt: skip
def test_rise_and_fall(results: str, verdicts: list[bool | None]) -> None:
    t = Target("w", "witness", rise=2, fall=3)
    seen = []
    for r in results:
        t.feed(r == "1", "")
        seen.append(t.up)
    assert seen == verdicts


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_every_verdict_change_is_backed_by_rise_or_fall_results_in_a_row(results: list[bool], rise: int,
                                                                         fall: int) -> None:
    t = Target("w", "witness", rise=rise, fall=fall)
    history: list[bool] = []
    for ok in results:
        before = t.up
        changed = t.feed(ok, "")
        history.append(ok)
        if changed and t.up is True:
            assert history[-rise:] == [True] * rise
        if changed and t.up is False and before is True:
            assert history[-fall:] == [False] * fall
        assert changed == (before != t.up)


def test_isolation_needs_min_reachable_witnesses() -> None:
    tr = tracker((W1, W2), min_reachable=2, rise=1)
    assert tr.isolated and "0 of 2 witness(es) reachable, 2 needed" in tr.fault_reason  # no verdict yet
    tr.result(str(W1), True, "")
    assert tr.isolated and tr.reachable == 1
    changes = tr.result(str(W2), True, "echo reply in 0.3 ms")
    assert not tr.isolated and tr.fault_reason == ""
    assert changes and "node may serve again" in changes[0].message and "echo reply in 0.3 ms" in changes[0].message
    for _ in range(2):
        assert tr.result(str(W1), False, "no echo reply") == [] or not tr.isolated
    changes = tr.result(str(W1), False, "no echo reply within 0.5 s")
    assert tr.isolated
    assert "witness 192.0.2.254 DOWN" in changes[0].message and "node must not serve" in changes[0].message
    assert "0 ok / 3 failed in a row (rise 1, fall 3)" in changes[0].message


def test_weighted_checks_lower_the_priority_within_1_254_and_weight_zero_faults() -> None:
    slow = CheckConfig(argv=("/usr/local/bin/slow",), weight=-60, fall=1)
    dead = CheckConfig(argv=("/usr/local/bin/dead",), weight=0, fall=1)
    tr = tracker((), checks=(slow, dead))
    assert tr.failing == [dead.name] and tr.priority_delta == 0  # no verdict: a weighted check costs nothing
    changes = tr.result(slow.name, False, "exit 1")
    assert tr.priority_delta == -60 and "priority delta now -60" in changes[0].message
    assert tr.effective_priority(100) == 40 and tr.effective_priority(50) == 1 and tr.effective_priority(255) == 195
    tr.result(dead.name, True, "exit 0")
    assert tr.failing == [] and tr.fault_reason == ""
    tr.result(slow.name, True, "exit 0")
    assert tr.priority_delta == 0 and tr.effective_priority(255) == 255  # untouched when nothing fails


@given(st.lists(st.tuples(st.sampled_from(["w1", "w2", "c1", "c2"]), st.booleans()), max_size=80))
def test_facts_always_follow_the_verdicts(events: list[tuple[str, bool]]) -> None:
    c1 = CheckConfig(argv=("/bin/c1",), weight=-200, fall=2, rise=1)
    c2 = CheckConfig(argv=("/bin/c2",), weight=-100, fall=1, rise=2)
    tr = tracker((W1, W2), min_reachable=1, checks=(c1, c2))
    names = {"w1": str(W1), "w2": str(W2), "c1": c1.name, "c2": c2.name}
    for key, ok in events:
        tr.result(names[key], ok, "")
        up = [tr.targets[str(w)].up is True for w in (W1, W2)]
        assert tr.isolated == (sum(up) < 1)
        assert 1 <= tr.effective_priority(100) <= 254
        assert tr.priority_delta == sum(t.weight for t in tr.targets.values() if t.kind == "check" and t.up is False)


def test_reconfigure_keeps_the_verdict_of_a_target_that_stays() -> None:
    tr = tracker((W1,), rise=1)
    tr.result(str(W1), True, "")
    tr.configure(TrackConfig(witnesses=(W1, W2), rise=1, min_reachable=1))
    assert tr.targets[str(W1)].up is True and tr.targets[str(W2)].up is None and not tr.isolated
    assert tr.result("198.51.100.1", True, "") == []  # a probe of a removed target is ignored


def test_echo_filter_passes_only_our_replies() -> None:
    ident = 0x1234
    prog = echo_reply_program(ident)
    ip = bytes([0x45]) + bytes(11) + bytes([192, 0, 2, 254]) + bytes([192, 0, 2, 1])
    reply = bytearray(echo_request(ident, 7))
    reply[0] = 0
    assert run_program(prog, ip + bytes(reply))
    assert parse_echo_reply(ip + bytes(reply)) == ("192.0.2.254", ident, 7)
    assert not run_program(prog, ip + echo_request(ident, 7))  # a request (clients pinging the VIP)
    other = bytearray(reply)
    other[5] = 0x35
    assert not run_program(prog, ip + bytes(other))  # another process's reply
    assert parse_echo_reply(b"\x45" + bytes(5)) is None


@pytest.mark.parametrize(("text", "key", "needle"), [
    ("[track]\n", "track", "needs witnesses"),
    ('[track]\nwitnesses = ["192.0.2.254"]\nmin_reachable = 2\n', "track.min_reachable", "only 1 witness"),
    ('[track]\nwitnesses = ["192.0.2.100"]\n', "track.witnesses", "is a VIP"),
    ('[track]\nwitnesses = ["192.0.2.254"]\ntimeout = 2.0\n', "track.timeout", "shorter than the interval"),
    ('[track]\nwitnesses = ["gateway"]\n', "track.witnesses", "not an IPv4 address"),
    ('[[track.check]]\nargv = "/bin/check --quick"\n', "track.check[1].argv", "not a shell string"),
    ('[[track.check]]\nargv = ["check"]\n', "track.check[1].argv", "absolute path"),
    ('[[track.check]]\nargv = ["/bin/true"]\nweight = 10\n', "track.check[1].weight", "-253..0"),
    ('[[track.check]]\nargv = ["/bin/true"]\ncolour = 1\n', "track.check[1].colour", "unknown key"),
])  # fmt: skip
def test_track_config_errors_name_the_key(text: str, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(BASE + text, "agent.toml")
    assert e.value.key == key and needle in str(e.value)


def test_track_config_example_from_the_readme_parses() -> None:
    cfg = parse(BASE + '[track]\nwitnesses = ["192.0.2.254"]\ninterval = 1.0\ntimeout = 0.5\nfall = 3\nrise = 2\n'
                'min_reachable = 1\n[[track.check]]\nargv = ["/usr/local/bin/check-something", "--quick"]\n'
                "interval = 5.0\ntimeout = 2.0\nfall = 2\nrise = 1\nweight = 0\n")
    assert cfg.track is not None and cfg.track.checks[0].argv == ("/usr/local/bin/check-something", "--quick")
