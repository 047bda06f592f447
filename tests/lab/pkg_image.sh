#!/bin/sh
# Finish a freshly mmdebstrapped root filesystem into the Debian package test's node image:
# a plain Debian 12 with systemd and NO project and NO venv.  The failover-agent package's
# dependencies are downloaded into /var/cache/apt/archives (not installed) by mmdebstrap's
# customize hook, and the package lists are kept, so `apt-get install ./failover-agent_*.deb`
# resolves and installs them inside a node that has no route out.
#
#   unshare --mount --propagation private --fork sh pkg_image.sh ROOTFS
#
# Called by tests/lab/pkgimage.py; the text of this file is part of the image cache key.
set -eu
root=$1
[ -x "$root/usr/bin/python3" ] || { echo "pkg_image.sh: $root has no /usr/bin/python3" >&2; exit 1; }
ls "$root"/var/cache/apt/archives/python3-pyroute2_*.deb >/dev/null || {
    echo "pkg_image.sh: the dependencies were not downloaded into /var/cache/apt/archives" >&2; exit 1; }
# apt must not delete what it installs from the cache, nor try the network for the lists
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' > "$root/etc/apt/apt.conf.d/90failover-agent-lab"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
for link in "$root"/etc/systemd/system/*.wants/*.timer; do
    [ -L "$link" ] || continue
    in_root systemctl disable "${link##*/}" >/dev/null 2>&1 || true
done
in_root systemctl mask console-getty.service >/dev/null

# as in nspawn_image.sh: /proc/sys/net writable, as on a real host
cat > "$root/etc/systemd/system/lab-proc-sys-net-rw.service" <<'UNIT'
[Unit]
Description=Writable /proc/sys/net, as on a real host (failover-agent nspawn lab)
DefaultDependencies=no
Before=sysinit.target systemd-sysctl.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount --bind /proc/sys/net /proc/sys/net
ExecStart=/bin/mount -o remount,bind,rw /proc/sys/net

[Install]
WantedBy=sysinit.target
UNIT
in_root systemctl enable lab-proc-sys-net-rw.service >/dev/null 2>&1

rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
: > "$root/etc/machine-id"
mkdir -p "$root/var/lib/dbus"
ln -sf /etc/machine-id "$root/var/lib/dbus/machine-id"
rm -rf "$root/var/log/journal"
mkdir -p "$root/var/log/journal"
