"""[[instance]] tables: one process, several instances; the file of one instance stays valid."""

from __future__ import annotations

import pytest

from agent import config
from agent.config import ConfigError, parse_process

ONE = '[vrrp]\ninterface = "eth0"\nvrid = 51\nvips = ["192.0.2.100/24"]\n'

PROCESS = """
[agent]
state_file = "/var/lib/fa/state.json"

[[notify]]
argv = ["/usr/local/bin/alert"]
events = ["transition"]

"""

STORAGE = """
[[instance]]
name = "{name}"
[instance.vrrp]
interface = "eth0"
vrid = {vrid}
priority = {priority}
vips = ["192.0.2.{host}/24"]
[instance.drbd]
resource = "r{minor}"
[instance.filesystem]
device = "/dev/drbd{minor}"
mountpoint = "/srv/{name}"
"""
TWO = PROCESS + STORAGE.format(name="nfs", vrid=51, priority=100, host=100, minor=0) + \
    STORAGE.format(name="db", vrid=52, priority=50, host=101, minor=1) + \
    '[[instance.service]]\nname = "mariadb"\nunit = "mariadb.service"\n'


def test_a_file_of_one_instance_is_one_instance_named_after_its_vrid() -> None:
    p = parse_process(ONE, "agent.toml")
    assert p.names == ("vrrp-51",)
    only = p.single()
    assert only.name == "vrrp-51" and only.agent.state_file == config.AgentConfig().state_file
    assert config.parse(ONE).name == "vrrp-51" and p.at_top and not parse_process(TWO).at_top


def test_instance_tables() -> None:
    p = parse_process(TWO, "agent.toml")
    assert p.names == ("nfs", "db")
    nfs, db = p.instances
    assert (nfs.vrrp.vrid, db.vrrp.vrid, db.vrrp.priority) == (51, 52, 50)
    assert nfs.drbd is not None and nfs.drbd.resource == "r0"
    assert [s.name for s in db.services] == ["mariadb"] and nfs.services == ()
    # the process's sections reach every instance; each keeps its own state file
    assert p.notify == nfs.notify == db.notify and len(p.notify) == 1
    assert (nfs.agent.state_file, db.agent.state_file) == ("/var/lib/fa/state-nfs.json", "/var/lib/fa/state-db.json")
    assert p.agent.state_file == "/var/lib/fa/state.json"
    assert p.instance("db") is db and p.instance("web") is None


def test_a_file_of_several_instances_is_not_one() -> None:
    with pytest.raises(ConfigError, match=r"holds 2 instances \(nfs, db\)"):
        config.parse(TWO)


def _edit(old: str, new: str, count: int = -1) -> str:
    assert old in TWO
    return TWO.replace(old, new, count)


@pytest.mark.parametrize(("text", "key", "reason"), [
    (_edit('name = "db"', 'name = "nfs"'), "instance[2].name", 'the name "nfs" is already instance[1]'),
    (_edit("vrid = 52", "vrid = 51"), "instance[2].vrrp.vrid", "VRID 51 on eth0"),
    (_edit('"192.0.2.101/24"', '"192.0.2.100/32"'), "instance[2].vrrp.vips", "the VIP 192.0.2.100"),
    (_edit('resource = "r1"', 'resource = "r0"'), "instance[2].drbd.resource", "the DRBD resource r0"),
    (_edit('device = "/dev/drbd1"', 'device = "/dev/drbd0"'), "instance[2].filesystem.device", "/dev/drbd0"),
    (_edit('"/srv/db"', '"/srv/nfs"'), "instance[2].filesystem.mountpoint", "/srv/nfs"),
    (_edit("vrid = 52", "vrid = 256"), "instance[2].vrrp.vrid", "must be in 1..255"),
    (_edit('unit = "mariadb.service"', 'unit = "nope"'), "instance[2].service[1].unit", "not a unit"),
    (_edit('name = "db"\n', ""), "instance[2].name", "is required"),
    (_edit('name = "db"', 'name = "d b"'), "instance[2].name", "not an instance name"),
    (_edit('name = "db"', 'name = "db"\nprioity = 3'), "instance[2].prioity", "unknown key"),
    (_edit('[[instance.service]]', '[instance.agent]\nmetrics = ""\n[[instance.service]]'), "instance[2].agent",
     "the process's"),
    (ONE + TWO, "vrrp", "a section of one instance"),
    ("instance = 3\n", "instance", "[[instance]] tables"),
    ("instance = []\n", "instance", "[[instance]] tables"),
])
def test_errors_name_the_instance_and_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_process(text, "agent.toml")
    assert err.value.key == key and reason in err.value.reason, str(err.value)


def test_vrid_may_repeat_on_another_interface_or_family() -> None:
    other = parse_process(_edit('interface = "eth0"\nvrid = 52', 'interface = "eth1"\nvrid = 51'))
    assert [c.vrrp.vrid for c in other.instances] == [51, 51]
    v6 = _edit('vrid = 52\npriority = 50\nvips = ["192.0.2.101/24"]',
               'vrid = 51\nversion = 3\npriority = 50\nvips = ["2001:db8::101/64"]')
    assert [c.vrrp.ipv6 for c in parse_process(v6).instances] == [False, True]


def test_one_nfs_server_per_host() -> None:
    exports = '[instance.nfs]\nexports = [{ path = "/srv/{d}/e", clients = "*", options = "rw,fsid=1" }]\n'
    text = TWO.replace('mountpoint = "/srv/nfs"\n', 'mountpoint = "/srv/nfs"\n' + exports.replace("{d}", "nfs"))
    assert parse_process(text).instances[0].nfs is not None
    text = text.replace('[[instance.service]]', exports.replace("{d}", "db") + '[[instance.service]]')
    with pytest.raises(ConfigError, match=r"instance\[2\]\.nfs: the host's one NFS server"):
        parse_process(text)


def test_sync_groups() -> None:
    text = _edit('name = "nfs"', 'name = "nfs"\nsync_group = "storage"')
    with pytest.raises(ConfigError) as err:
        parse_process(text)
    assert err.value.key == "instance[1].sync_group" and "a group is two instances or more" in err.value.reason
    both = parse_process(text.replace('name = "db"', 'name = "db"\nsync_group = "storage"'))
    assert [c.sync_group for c in both.instances] == ["storage", "storage"]
    assert config.sync_groups(both.instances) == {"storage": ("nfs", "db")}
    assert config.sync_groups(parse_process(TWO).instances) == {}
    with pytest.raises(ConfigError, match="not a sync group name"):
        parse_process(_edit('name = "db"', 'name = "db"\nsync_group = "a b"'))
    moved = config.describe_process_changes(parse_process(TWO), both)
    assert moved == ["nfs: sync_group: none -> storage", "db: sync_group: none -> storage"]
