#!/bin/sh
# Finish a freshly mmdebstrapped Debian root filesystem into failover-agent's nspawn node image.
#
#   unshare --mount --propagation private --fork sh nspawn_image.sh ROOTFS REQUIREMENT...
#
# Called by tests/lab/nspawn.py (build_image); the text of this file is part of the image cache
# key, so editing it rebuilds the image.  It runs in a private mount namespace so that the
# pseudo filesystems mounted below vanish with it, even if it is killed half way: a leftover
# bind mount under ROOTFS would otherwise be deleted through by the next `rm -rf`.
set -eu

root=$1
shift
venv=/opt/failover-agent/venv

[ -x "$root/usr/bin/python3" ] || { echo "nspawn_image.sh: $root has no /usr/bin/python3" >&2; exit 1; }

# --- what pip needs inside the chroot: /proc, a minimal /dev (never the host's /dev: a
# --- recursive delete of a failed build must not reach real device nodes) and DNS.
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
mknod -m 0666 "$root/dev/null" c 1 3
mknod -m 0666 "$root/dev/zero" c 1 5
mknod -m 0666 "$root/dev/random" c 1 8
mknod -m 0666 "$root/dev/urandom" c 1 9
ln -s /proc/self/fd "$root/dev/fd"
mkdir -p "$root/dev/shm"
# A tmpfs on the chroot's /run holds what is only lent for the build: the host's CA bundle
# (this network intercepts TLS with its own CA, which pip's bundled certifi does not know).
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
ca=
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/run/host-ca.crt"
    ca=/run/host-ca.crt
fi
# DNS for pip: the host's resolv.conf (mmdebstrap leaves a copy of it in the tree; the nodes
# get none, the lab network has no resolver).
rm -f "$root/etc/resolv.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# A clean environment: the host's PIP_* settings (find-links, local indexes) do not exist in
# the chroot.  Proxies are passed on so that a machine that needs one still builds.
in_root() {
    chroot "$root" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        ${ca:+PIP_CERT=$ca} ${ca:+SSL_CERT_FILE=$ca} \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
        ${no_proxy:+no_proxy=$no_proxy} \
        "$@"
}

# --- the project's runtime dependencies, built with the image's own python (Debian 3.11), so
# --- systemd-python links against the image's libsystemd.
in_root /usr/bin/python3 -m venv "$venv"
in_root "$venv/bin/pip" install --no-cache-dir --quiet "$@"
in_root "$venv/bin/pip" freeze --all > "$root/opt/failover-agent/requirements.lock"

# The project itself is not in the image: each node bind-mounts the working tree read-only
# at /opt/failover-agent/src, and this .pth puts it on the venv's sys.path.
site=$(in_root "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo /opt/failover-agent/src > "$root$site/failover_agent_src.pth"
mkdir -p "$root/opt/failover-agent/src" "$root/var/cache/failover-agent"

# --- units: keepalived is installed for interop tests but must not start by itself; timers
# --- (apt-daily, dpkg-db-backup, ...) would wake nodes up during measurements; a getty on the
# --- read-only console is useless.
in_root systemctl disable keepalived.service >/dev/null 2>&1 || true
for link in "$root"/etc/systemd/system/*.wants/*.timer; do
    [ -L "$link" ] || continue
    in_root systemctl disable "${link##*/}" >/dev/null 2>&1 || true
done
in_root systemctl mask console-getty.service >/dev/null

# --- nspawn makes /proc/sys/net writable only for a network namespace it created itself; with
# --- --network-namespace-path it stays read-only, unlike on a real host.  Re-mount it
# --- read-write before sysinit (the container keeps CAP_SYS_ADMIN for its own mounts).
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

# --- identity and logs: every node gets its machine id from nspawn (--uuid), and journald
# --- persists into an empty /var/log/journal (in the node's overlay upper layer).
rm -f "$root/etc/resolv.conf"
# No /etc/hostname: systemd would override the per-node name nspawn sets (--hostname).
rm -f "$root/etc/hostname"
: > "$root/etc/machine-id"
mkdir -p "$root/var/lib/dbus"
ln -sf /etc/machine-id "$root/var/lib/dbus/machine-id"
rm -rf "$root/var/log/journal"
mkdir -p "$root/var/log/journal"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/root/.cache"
