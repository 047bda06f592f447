"""NFS export parsing and rendering for kernel nfsd and nfs-ganesha."""

from __future__ import annotations

import pytest

from nfs.exports import Export, ExportError, parse_export, render_ganesha, render_kernel

MNT = "/srv/nfs"


def test_parse_and_render_kernel() -> None:
    e = parse_export({"path": "/srv/nfs", "clients": "192.0.2.0/24",
                      "options": "rw,sync,no_subtree_check,fsid=1"}, MNT)
    assert e == Export("/srv/nfs", "192.0.2.0/24", ("rw", "sync", "no_subtree_check", "fsid=1"))
    assert render_kernel([e]).splitlines()[1] == "/srv/nfs 192.0.2.0/24(rw,sync,no_subtree_check,fsid=1)"


@pytest.mark.parametrize(("raw", "words"), [
    ({"path": "srv", "clients": "*", "options": "fsid=1"}, "absolute path"),
    ({"path": "/elsewhere", "clients": "*", "options": "fsid=1"}, "not on the replicated filesystem"),
    ({"path": "/srv/nfs", "clients": "", "options": "fsid=1"}, "clients must be"),
    ({"path": "/srv/nfs", "clients": "a b", "options": "fsid=1"}, "clients must be"),
    ({"path": "/srv/nfs", "clients": "*", "options": "rw,sync"}, "explicit fsid="),
    ({"path": "/srv/nfs", "clients": "*", "options": "rw;rm -rf /,fsid=1"}, "not an export option"),
    ({"path": "/srv/nfs", "clients": "*", "options": "fsid=1", "mode": 1}, "unknown field"),
])
def test_bad_exports_are_refused(raw: dict[str, object], words: str) -> None:
    with pytest.raises(ExportError, match=words):
        parse_export(raw, MNT)


def test_render_ganesha_puts_recovery_on_the_shared_disk() -> None:
    e = parse_export({"path": "/srv/nfs/data", "clients": "192.0.2.0/24", "options": "rw,fsid=7"}, MNT)
    conf = render_ganesha([e], "/srv/nfs/.nfs-state/ganesha", grace=10, lease=10, graceless=True)
    assert 'RecoveryRoot = "/srv/nfs/.nfs-state/ganesha";' in conf
    assert "Graceless = true;" in conf and "Export_Id = 7;" in conf and 'Path = "/srv/nfs/data";' in conf
    assert "Enable_NLM = false;" in conf and conf.count("{") == conf.count("}")
