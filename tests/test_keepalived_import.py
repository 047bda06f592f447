"""import-keepalived for storage pairs: notify scripts become draft storage sections or exit 3,
vrrp_script/track_script become [[track.check]], includes are followed, advert_int is rounded as
keepalived 2.2.7 rounds it, and a file holding auth_pass is written 0600. Every converted config
is checked with agent.config.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent import cli
from agent import config as configmod
from agent import keepalived_import as ki

GLOBAL = """\
global_defs {
   router_id NFS1
   script_user root
   enable_script_security
}
"""

INSTANCE = """\
vrrp_instance VI_NFS {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int {advert}
    nopreempt
    authentication {{
        auth_type PASS
        auth_pass s3cr3t
    }}
    virtual_ipaddress {{
        192.0.2.100/24 dev eth0
    }}
{extra}}}
"""

MASTER_SH = """\
#!/bin/bash
# keepalived notify_master: take over the NFS service
RES=r0
logger -t keepalived "becoming master for $RES"
drbdadm primary $RES || exit 1
mount -t xfs -o noatime,nodiratime /dev/drbd0 /srv/nfs
mount --bind /srv/nfs/.nfsstate /var/lib/nfs
exportfs -o rw,sync,no_subtree_check,fsid=7 192.0.2.0/24:/srv/nfs/export 2>/dev/null
systemctl start nfs-kernel-server
"""

BACKUP_SH = """\
#!/bin/sh
systemctl stop nfs-kernel-server
exportfs -ua
umount /var/lib/nfs
fuser -km /srv/nfs; umount /srv/nfs || umount -l /srv/nfs
drbdadm secondary r0
"""


def write(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def pair(tmp_path: Path, extra: str = "", advert: str = "1", master: str = MASTER_SH, backup: str = BACKUP_SH) -> Path:
    """A node of a DRBD/NFS pair: keepalived.conf with its notify scripts next to it."""
    m = write(tmp_path / "scripts" / "nfs-master.sh", master)
    b = write(tmp_path / "scripts" / "nfs-backup.sh", backup)
    notify = (f'    notify_master "{m}"\n    notify_backup "{b}"\n    notify_fault "{b}"\n    notify_stop "{b}"\n'
              + extra)
    return write(tmp_path / "keepalived.conf", GLOBAL + INSTANCE.format(advert=advert, extra=notify), 0o600)


def convert(path: Path, **kw: object) -> ki.Result:
    kw.setdefault("exports_files", [str(path.parent / "exports")])
    res = ki.convert(path.read_text(), source=str(path), **kw)  # type: ignore[arg-type]
    configmod.parse(res.toml, "imported.toml")  # whatever happens, the output is a valid config
    return res


def test_notify_scripts_become_draft_storage_sections(tmp_path: Path) -> None:
    res = convert(pair(tmp_path))
    assert res.review == [], res.review
    cfg = configmod.parse(res.toml)
    assert cfg.drbd is not None and cfg.drbd.resource == "r0"  # $RES resolved from RES=r0
    assert cfg.filesystem is not None
    assert (cfg.filesystem.device, cfg.filesystem.mountpoint, cfg.filesystem.fstype, cfg.filesystem.options) == \
        ("/dev/drbd0", "/srv/nfs", "xfs", ("noatime", "nodiratime"))
    assert cfg.nfs is not None
    assert (cfg.nfs.backend, cfg.nfs.service, cfg.nfs.state_dir) == ("kernel", "systemd", ".nfsstate")
    assert [(e.path, e.clients, e.fsid) for e in cfg.nfs.exports] == [("/srv/nfs/export", "192.0.2.0/24", "7")]
    assert cfg.steps == ("drbd", "mount", "nfs_state", "nfs", "vip")
    text = res.toml
    assert "# REVIEW: drafted from" in text and "nfs-master.sh line 5" in text
    assert f"# replaced: notify_master {tmp_path}/scripts/nfs-master.sh: its storage commands are drafted" in text
    assert "disable the unit at boot" in text  # service = "systemd" needs the admin's attention


def test_the_command_writes_0600_with_auth_pass_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = pair(tmp_path)
    out = tmp_path / "agent.toml"
    old = os.umask(0o022)
    try:
        assert cli.main(["import-keepalived", str(src), "-o", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert configmod.load(out).vrrp.auth_pass == "s3cr3t"
        # without a password the file gets the ordinary mode
        plain = write(tmp_path / "plain.conf", GLOBAL + INSTANCE.format(advert="1", extra="").replace(
            "auth_type PASS\n        auth_pass s3cr3t", "auth_type PASS"))
        assert cli.main(["import-keepalived", str(plain), "-o", str(tmp_path / "plain.toml")]) == 0
        assert stat.S_IMODE((tmp_path / "plain.toml").stat().st_mode) == 0o644
    finally:
        os.umask(old)
    assert "holds auth_pass: mode 0600" in capsys.readouterr().err


def test_unreadable_notify_script_is_never_a_silent_vip_only_config(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "keepalived.conf", INSTANCE.format(
        advert="1", extra='    notify_master "/etc/keepalived/nosuch-master.sh"\n'))
    out = tmp_path / "agent.toml"
    assert cli.main(["import-keepalived", str(src), "-o", str(out)]) == 3
    text = out.read_text()
    assert "# NEEDS REVIEW: notify_master /etc/keepalived/nosuch-master.sh: cannot read" in text
    assert configmod.load(out).drbd is None  # valid, VIP-only, but said loudly
    err = capsys.readouterr().err
    assert "NEEDS REVIEW: notify_master /etc/keepalived/nosuch-master.sh" in err and "1 item(s) need review" in err


@pytest.mark.parametrize(("line", "words"), [
    ("drbdadm primary all", "names no resource ('all')"),
    ("mount /srv/nfs", "comes from /etc/fstab"),
    ("mount -a", "mounts everything in /etc/fstab"),
    ("vgchange -ay vg_nfs", "vgchange is not something the agent runs"),
    ("systemctl start smbd", "the agent runs no other services"),
    ("drbdadm primary $1", "uses a variable the importer cannot resolve"),
    ("mount --bind /srv/nfs/www /var/www", "a bind mount the agent does not make"),
])
def test_what_cannot_be_converted_is_named(tmp_path: Path, line: str, words: str) -> None:
    res = convert(pair(tmp_path, master=MASTER_SH.replace("drbdadm primary $RES || exit 1", line),
                       backup=BACKUP_SH.replace("drbdadm secondary r0", "drbdadm secondary all")))
    assert any(words in item for item in res.review), res.review
    assert "# NEEDS REVIEW:" in res.toml


def test_inline_notify_commands_are_parsed(tmp_path: Path) -> None:
    """keepalived's classic one-liner, and the same through sh -c."""
    for command in ("drbdadm primary r0; mount -t ext4 /dev/drbd0 /srv/nfs; systemctl start nfs-server",
                    "/bin/sh -c 'drbdadm primary r0 && mount -t ext4 /dev/drbd0 /srv/nfs && "
                    "systemctl start nfs-server.service'"):
        write(tmp_path / "exports", "/srv/nfs  192.0.2.0/24(rw,sync,no_subtree_check,fsid=1) *(ro,fsid=1)\n"
                                    "/home  192.0.2.0/24(rw)\n", 0o644)
        src = write(tmp_path / "keepalived.conf", INSTANCE.format(advert="1", extra=f'    notify_master "{command}"\n'))
        res = convert(src)
        cfg = configmod.parse(res.toml)
        assert cfg.drbd is not None and cfg.filesystem is not None and cfg.nfs is not None, res.toml
        # exports come from /etc/exports (nfs-server.service exports it), one entry per client
        assert [(e.path, e.clients) for e in cfg.nfs.exports] == [("/srv/nfs", "192.0.2.0/24"), ("/srv/nfs", "*")]
        assert any("/home to 192.0.2.0/24 is not on the replicated filesystem" in w for w in res.warnings)
        assert "# REVIEW: exports read from" in res.toml
        assert res.review == []


def test_a_draft_our_parser_refuses_is_commented_out_and_named(tmp_path: Path) -> None:
    """Exports without fsid= would give clients ESTALE after a failover: not guessed."""
    write(tmp_path / "exports", "/srv/nfs 192.0.2.0/24(rw,sync)\n", 0o644)
    res = convert(pair(tmp_path, master=MASTER_SH.replace(
        "exportfs -o rw,sync,no_subtree_check,fsid=7 192.0.2.0/24:/srv/nfs/export 2>/dev/null", "exportfs -ra")))
    assert any(item.startswith("draft nfs.exports[1]: options need an explicit fsid=") for item in res.review)
    assert "# NEEDS REVIEW: commented out, see above\n# [nfs]\n# backend = \"kernel\"" in res.toml
    cfg = configmod.parse(res.toml)
    assert cfg.nfs is None and cfg.filesystem is not None and cfg.drbd is not None


def test_ganesha_exports_need_review(tmp_path: Path) -> None:
    res = convert(pair(tmp_path, master=MASTER_SH.replace("nfs-kernel-server", "nfs-ganesha").replace(
        "exportfs -o rw,sync,no_subtree_check,fsid=7 192.0.2.0/24:/srv/nfs/export 2>/dev/null\n", "")))
    assert any("nfs-ganesha" in item and "EXPORT blocks" in item for item in res.review)
    assert "# [nfs]\n# backend = \"ganesha\"" in res.toml


def test_generic_notify_script_and_sync_group(tmp_path: Path) -> None:
    """`notify` gets TYPE NAME STATE: a case statement; the sync group's scripts count for its instances."""
    notify = write(tmp_path / "notify.sh", """#!/bin/bash
TYPE=$1 NAME=$2 STATE=$3
case $STATE in
  MASTER) /sbin/drbdadm primary r1 && \\
          /bin/mount -t ext4 /dev/drbd/by-res/r1 /export ;;
  BACKUP|FAULT) umount /export; drbdadm secondary r1 ;;
esac
""")
    text = INSTANCE.format(advert="1", extra="") + f"""
vrrp_sync_group G1 {{
    group {{
        VI_NFS
    }}
    notify "{notify}"
}}
"""
    res = convert(write(tmp_path / "keepalived.conf", text))
    cfg = configmod.parse(res.toml)
    assert cfg.drbd is not None and cfg.drbd.resource == "r1"
    assert cfg.filesystem is not None and cfg.filesystem.device == "/dev/drbd/by-res/r1"
    assert f"# replaced: vrrp_sync_group G1 notify {notify}" in res.toml
    assert "vrrp_sync_group G1: its notify scripts and track_script apply to VI_NFS" in res.mapped


def test_notify_scripts_without_storage_work(tmp_path: Path) -> None:
    mail = write(tmp_path / "mail.sh", "#!/bin/sh\nlogger failover\nmail -s failover root </dev/null\n")
    res = convert(write(tmp_path / "keepalived.conf", INSTANCE.format(
        advert="1", extra=f'    notify_master "{mail}"\n    notify_backup "/usr/bin/logger backup"\n')))
    assert res.review == [] and configmod.parse(res.toml).drbd is None
    assert f"# replaced: notify_master {mail}: runs no DRBD, mount, export or NFS service command " \
           "(runs: logger, mail)" in res.toml


# -- vrrp_script / track_script -----------------------------------------------------------------
SCRIPTS = """\
vrrp_script chk_nfs {
    script "/usr/local/bin/check_nfs.sh --quick"
    interval 2
    fall 3
    rise 2
}
vrrp_script chk_gw {
    script "ping -c1 -W1 192.0.2.254"
    interval 5
    timeout 2
    weight 20
}
vrrp_script chk_load {
    script "/usr/local/bin/load_ok"
    weight -30
    user nobody
}
vrrp_script chk_unused {
    script "/bin/true"
}
"""


def test_tracked_scripts_become_checks_with_keepalived_semantics(tmp_path: Path) -> None:
    track = "    track_script {\n        chk_nfs\n        chk_gw\n        chk_load weight -10\n    }\n"
    src = write(tmp_path / "keepalived.conf", SCRIPTS + INSTANCE.format(advert="1", extra=track))
    res = convert(src, which=lambda name: f"/usr/bin/{name}")
    cfg = configmod.parse(res.toml)
    assert cfg.track is not None
    checks = {c.argv[0]: c for c in cfg.track.checks}
    nfs, gw, load = checks["/usr/local/bin/check_nfs.sh"], checks["/usr/bin/ping"], checks["/usr/local/bin/load_ok"]
    # weight 0: FAULT after fall failures; keepalived's default timeout is the interval, ours must be below it
    assert (nfs.argv, nfs.interval, nfs.timeout, nfs.fall, nfs.rise, nfs.weight) == \
        (("/usr/local/bin/check_nfs.sh", "--quick"), 2.0, 1.8, 3, 2, 0)
    # +20 while succeeding == base raised by 20, -20 while failing
    assert (gw.argv, gw.interval, gw.timeout, gw.weight) == \
        (("/usr/bin/ping", "-c1", "-W1", "192.0.2.254"), 5.0, 2.0, -20)
    assert cfg.vrrp.priority == 170
    assert load.weight == -10  # the instance's track_script overrides the script's weight
    assert "'ping' resolved to /usr/bin/ping on this host" in res.toml
    assert "keepalived ran it as user nobody" in res.toml
    assert any("vrrp_script chk_unused: not tracked by VI_NFS" in u for u in res.unmapped)
    assert res.checks == 3 and res.review == []


@pytest.mark.parametrize(("script", "track", "words"), [
    ('script "</dev/tcp/127.0.0.1/2049"', "chk", "uses shell syntax"),
    ('script "check_it"', "chk", "has no absolute path and is not found"),
    ('script "/bin/true"\n    weight 10 reverse', "chk", "'weight 10 reverse'"),
    ('script "/bin/true"', "chk weight -5 reverse", "'weight -5 reverse'"),
    ('script "/bin/true"', "nosuch", "no vrrp_script nosuch is defined"),
    ('script "/bin/true"\n    weight 200', "chk", "exceeds 254"),
])
def test_checks_that_cannot_be_converted(tmp_path: Path, script: str, track: str, words: str) -> None:
    text = f"vrrp_script chk {{\n    {script}\n}}\n" + INSTANCE.format(
        advert="1", extra=f"    track_script {{\n        {track}\n    }}\n")
    res = convert(write(tmp_path / "keepalived.conf", text), which=lambda name: None)
    assert any(words in item for item in res.review), res.review


# -- include ------------------------------------------------------------------------------------
def test_includes_are_followed_relative_to_the_including_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "keepalived"
    write(etc / "conf.d" / "10-scripts.conf", "include ../scripts/{nfs,gw}.conf\n", 0o644)
    write(etc / "scripts" / "nfs.conf", 'vrrp_script chk_nfs {\n    script "/bin/true"\n    interval 3\n}\n', 0o644)
    write(etc / "scripts" / "gw.conf", 'vrrp_script chk_gw {\n    script "/bin/false"\n}\n', 0o644)
    write(etc / "conf.d" / "20-instance.conf", INSTANCE.format(
        advert="1", extra="    track_script {\n        chk_nfs\n        chk_gw\n    }\n"), 0o644)
    main = write(etc / "keepalived.conf", GLOBAL + "include conf.d/*.conf\nincludea optional/*.conf\n", 0o644)
    res = convert(main)
    cfg = configmod.parse(res.toml)
    assert cfg.vrrp.vrid == 51 and cfg.track is not None
    assert [c.argv for c in cfg.track.checks] == [("/bin/true",), ("/bin/false",)]
    assert any("includea optional/*.conf (line 7): no file matches it" in u for u in res.unmapped)


def test_include_loop_and_errors_in_included_files(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "include b.conf\n", 0o644)
    write(tmp_path / "b.conf", "include a.conf\n", 0o644)
    with pytest.raises(ki.ImportError_, match="includes itself"):
        convert(write(tmp_path / "keepalived.conf", "include a.conf\n"))
    write(tmp_path / "bad.conf", "}\n", 0o644)
    with pytest.raises(ki.ImportError_, match=f"{tmp_path}/bad.conf line 1: unmatched"):
        convert(write(tmp_path / "keepalived.conf", INSTANCE.format(advert="1", extra="") + "include bad.conf\n"))


def test_brace_expansion() -> None:
    assert ki.brace_expand("a/{x,y{1,2}}/*.conf") == ["a/x/*.conf", "a/y1/*.conf", "a/y2/*.conf"]
    assert ki.brace_expand("plain.conf") == ["plain.conf"]
    assert ki.brace_expand("open{.conf") == ["open{.conf"]


# -- advert_int ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "version", "interval", "warned"), [
    ("1", 2, 1.0, False),
    ("1.5", 2, 2.0, True),  # half up
    ("2.4", 2, 2.0, True),
    ("0.4", 2, 1.0, True),  # rounds to 0, which becomes 1 s
    ("300", 2, 1.0, True),  # outside 0.01..255: ignored, the default 1 s stays
    ("1e400", 2, 1.0, True),  # finite, so the same (found by bench.fuzz when it was an OverflowError)
    ("0.125", 3, 0.13, True),  # v3: half up to 10 ms
    ("0.1", 3, 0.1, False),
    ("50", 3, 40.95, True),
])
def test_advert_int_as_keepalived_uses_it(tmp_path: Path, text: str, version: int, interval: float,
                                          warned: bool) -> None:
    assert ki.keepalived_advert_int(text, version)[0] == interval
    extra = "    version 3\n" if version == 3 else ""
    conf = INSTANCE.format(advert=text, extra=extra)
    if version == 3:
        conf = conf.replace("    authentication {\n        auth_type PASS\n        auth_pass s3cr3t\n    }\n", "")
    res = convert(write(tmp_path / "keepalived.conf", conf))
    assert configmod.parse(res.toml).vrrp.advert_interval == interval
    assert any(w.startswith(f"advert_int {text}:") for w in res.warnings) == warned
    if warned and text == "1.5":
        assert "# REVIEW: advert_int 1.5: VRRPv2 needs whole seconds; keepalived 2.2.7 rounds it (half up) to 2 s" \
            in res.toml


# -- shell reading ------------------------------------------------------------------------------
def test_simple_commands_of_a_shell_text() -> None:
    text = ('X=r0\nif drbdadm primary "$X" 2>/dev/null; then mount /dev/drbd0 /srv >/dev/null 2>&1; fi\n'
            "sudo -n systemctl start nfs-server | logger\n# drbdadm primary r9\necho 'unbalanced\n")
    cmds = [(n, argv) for n, argv, _ in ki.simple_commands(text)]
    assert cmds == [(2, ["drbdadm", "primary", "r0"]), (2, ["mount", "/dev/drbd0", "/srv"]),
                    (3, ["systemctl", "start", "nfs-server"]), (3, ["logger"]), (5, None)]


def test_every_instance_and_sync_group(tmp_path: Path) -> None:
    """Without --instance every vrrp_instance becomes an [[instance]]; a sync group, their sync_group.
    The group's notify script drafts the same storage for both members: the second draft is
    commented out for review (a DRBD resource belongs to one instance)."""
    notify = write(tmp_path / "notify.sh", "#!/bin/bash\ncase $3 in\n  MASTER) /sbin/drbdadm primary r1 && "
                   "/bin/mount -t ext4 /dev/drbd/by-res/r1 /export ;;\n  BACKUP|FAULT) umount /export; "
                   "drbdadm secondary r1 ;;\nesac\n")
    second = INSTANCE.format(advert="1", extra="").replace("VI_NFS", "VI_DB").replace(
        "virtual_router_id 51", "virtual_router_id 52").replace("192.0.2.100/24", "192.0.2.101/24")
    text = INSTANCE.format(advert="1", extra="") + second + f"""
vrrp_sync_group G1 {{
    group {{
        VI_NFS
        VI_DB
    }}
    notify "{notify}"
}}
"""
    path = write(tmp_path / "keepalived.conf", text)
    res = ki.convert_all(path.read_text(), source=str(path), exports_files=[])
    process = configmod.parse_process(res.toml)
    assert process.names == ("VI_NFS", "VI_DB")
    assert [c.sync_group for c in process.instances] == ["G1", "G1"]
    assert [c.vrrp.vrid for c in process.instances] == [51, 52]
    nfs, db = process.instances
    assert nfs.drbd is not None and nfs.drbd.resource == "r1" and db.drbd is None
    assert any("instance[2].drbd.resource" in item for item in res.review), res.review
    assert "# [instance.drbd]" in res.toml, "the refused draft stays, commented out"
    assert 'vrrp_sync_group G1 -> sync_group = "G1" in VI_DB, VI_NFS' in res.mapped
    assert any(item.startswith("VI_DB: ") for item in res.mapped)


def test_one_instance_converts_as_before_and_the_command_takes_every_instance(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write(tmp_path / "one.conf", INSTANCE.format(advert="1", extra=""))
    assert ki.convert_all(one.read_text(), source=str(one)).toml == ki.convert(one.read_text(), source=str(one)).toml
    second = INSTANCE.format(advert="1", extra="").replace("VI_NFS", "VI_WEB").replace(
        "virtual_router_id 51", "virtual_router_id 53").replace("192.0.2.100/24", "192.0.2.102/24")
    two = write(tmp_path / "two.conf", INSTANCE.format(advert="1", extra="") + second)
    out = tmp_path / "agent.toml"
    assert cli.main(["import-keepalived", str(two), "-o", str(out)]) == 0
    assert configmod.load_process(out).names == ("VI_NFS", "VI_WEB")
    assert "vrrp_instance VI_NFS, VI_WEB:" in capsys.readouterr().err
    assert cli.main(["import-keepalived", str(two), "--instance", "VI_WEB", "-o", str(out)]) == 0
    assert configmod.load(out).vrrp.vrid == 53
