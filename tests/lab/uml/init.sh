#!/bin/bash
# PID 1 of a user-mode-linux lab node (see tests/lab/uml.py); installed as /usr/sbin/lab-init.
#
# Why a bash script and not systemd or a Python program: it is up within milliseconds, it
# reaps orphaned daemons (bash waits for any child on SIGCHLD), and its idle loop is a
# blocking `read` on the command channel.  Under UML every guest fork/exec is expensive
# host ptrace work, so nothing here may fork while the node is idle.
#
# Configuration comes from the kernel command line as LAB_KEY=VALUE words (values never
# contain blanks; tests/lab/uml.py validates them):
#   LAB_HOSTNAME=a                      UTS hostname (DRBD's "on a { }" matches it)
#   LAB_HOSTS=192.0.2.1:a,192.0.2.2:b   /etc/hosts entries
#   LAB_IF0=eth0,192.0.2.1/24           rename vec0 to eth0 and give it the address
#   LAB_MODULES=/usr/lib/uml/modules    host dir mounted (hostfs, ro) on /lib/modules
#   LAB_SHARED=/dev/shm/.../a/lab       host dir mounted (hostfs) on /lab: requests, results
#   LAB_SRC=/work/main                  project tree mounted (hostfs, ro) on /opt/failover-agent/src
#   LAB_CHANNEL=/dev/ttyS0              serial line wired to two host pipes (ssl0=fd:R,fd:W)
#
# Protocol on the channel (one line each way):
#   host -> guest  "ID"                 run request /lab/q/ID.req
#   guest -> host  "ready HOST UPTIME"  once, when the node is usable
#   guest -> host  "done ID VALUE"      exit status (run) or guest PID (spawn)
# ID.req holds NUL-terminated fields: mode (run | spawn | read | poweroff), timeout, cwd, stdin
# path, log path, argv... (read: argv is one file, read by the shell without a fork)
# NUL-separated fields are exactly what execve() takes, and bash's `mapfile -d ''` reads
# them without a parser process: no value is ever interpreted by a shell.

set -u
# No AVX in guest user space (tests/lab/uml.py, "Host CPU quirk"): on hosts where UML carries
# only the x87/SSE part of a guest process's vector registers, every page fault zeroes the
# rest, and every host is to run the same guest code.  glibc and OpenSSL pick their code by
# CPUID at startup, so GLIBC_TUNABLES and OPENSSL_ia32cap come from the kernel command line
# (GUEST_NO_AVX_ENV): set here, with a re-exec, they would come too late, as bash itself can
# die at startup before running a line of this script.
if [[ ${GLIBC_TUNABLES:-} != *-AVX512F* || -z ${OPENSSL_ia32cap:-} ]]; then
    echo "lab-init: FATAL: GLIBC_TUNABLES and OPENSSL_ia32cap must come from the kernel command line"
    exit 1
fi
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 HOME=/root TERM=dumb
umask 022

say() { printf 'lab-init: %s\n' "$*"; }

mount -n -t proc proc /proc
mount -n -t sysfs sysfs /sys
[[ -e /dev/null && -e /dev/ubda ]] || mount -n -t devtmpfs devtmpfs /dev  # the kernel may have done it
mkdir -p /dev/pts /dev/shm
mount -n -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -n -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -n -t tmpfs -o mode=0755,size=64m tmpfs /run
mount -n -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/lock /run/lab /run/rpcbind /run/sendsigs.omit.d
ln -sf /proc/self/mounts /etc/mtab 2>/dev/null

# Programs the kernel starts itself (modprobe for module autoloading, DRBD's handler
# helper, nfsd's client-tracking upcall) get a fixed environment without the variables
# above: they run through dash wrappers that add them.  Where UML carries only the FXSAVE
# part of the registers, that relies on dash starting without them (tests/lab/uml.py).
mkdir -p /run/lab/helpers
helper() {  # NAME TARGET
    printf '#!/bin/sh\nGLIBC_TUNABLES=%s\nOPENSSL_ia32cap=%s\nexport GLIBC_TUNABLES OPENSSL_ia32cap\nexec %s "$@"\n' \
        "$GLIBC_TUNABLES" "$OPENSSL_ia32cap" "$2" >"/run/lab/helpers/$1"
    chmod 755 "/run/lab/helpers/$1"
}
helper modprobe /usr/sbin/modprobe
helper drbdadm /usr/sbin/drbdadm
helper nfsdcltrack /usr/sbin/nfsdcltrack
echo /run/lab/helpers/modprobe >/proc/sys/kernel/modprobe
printf 'options drbd usermode_helper=/run/lab/helpers/drbdadm\noptions nfsd cltrack_prog=/run/lab/helpers/nfsdcltrack\n' \
    >/etc/modprobe.d/lab-helpers.conf

declare -A P=()
read -r -a words </proc/cmdline
for w in "${words[@]}"; do
    if [[ $w == LAB_*=* ]]; then
        P[${w%%=*}]=${w#*=}
        unset "${w%%=*}"  # the kernel also put it into our environment: keep children clean
    fi
done

hostmount() {  # HOSTDIR GUESTDIR [OPTIONS]
    mkdir -p "$2" && mount -n -t hostfs -o "${3:+$3,}$1" hostfs "$2" \
        || say "FATAL: cannot mount host dir $1 on $2"
}
[[ -n ${P[LAB_MODULES]:-} ]] && hostmount "${P[LAB_MODULES]}" /lib/modules ro
[[ -n ${P[LAB_SHARED]:-} ]] && hostmount "${P[LAB_SHARED]}" /lab
[[ -n ${P[LAB_SRC]:-} ]] && hostmount "${P[LAB_SRC]}" /opt/failover-agent/src ro
mkdir -p /lab/q

host=${P[LAB_HOSTNAME]:-uml}
echo "$host" >/proc/sys/kernel/hostname
echo "$host" >/etc/hostname
{
    echo "127.0.0.1 localhost"
    IFS=, read -r -a entries <<<"${P[LAB_HOSTS]:-}"
    for e in "${entries[@]}"; do echo "${e%%:*} ${e#*:}"; done
} >/etc/hosts

# No IPv6: the lab networks are IPv4 only and router solicitations would only add noise.
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
    [[ -e $f ]] && echo 1 >"$f"
done
ip link set lo up
for i in 0 1 2 3; do
    spec=${P[LAB_IF$i]:-}
    [[ -n $spec ]] || continue
    dev=${spec%%,*}
    addr=${spec#*,}
    { ip link set "vec$i" name "$dev" && ip addr add "$addr" dev "$dev" && ip link set "$dev" up; } \
        || say "FATAL: cannot configure vec$i as $dev $addr"
done

chan=${P[LAB_CHANNEL]:-/dev/ttyS0}
# raw: no echo of requests back to the host, no \n -> \r\n translation of our answers.
stty -F "$chan" raw -echo || say "FATAL: cannot set $chan to raw mode"
exec 3<>"$chan" || say "FATAL: cannot open command channel $chan"
# A FIFO opened read-write never reaches EOF: `read -t N -u 4` is a fork-free sleep.
mkfifo /run/lab/idle && exec 4<>/run/lab/idle

poweroff_node() {
    say "powering off"
    kill -TERM -1 2>/dev/null
    read -r -t 2 -u 4 _
    kill -KILL -1 2>/dev/null
    read -r -t 0.3 -u 4 _
    umount -a -t nfs,nfs4,nfsd,rpc_pipefs 2>/dev/null
    umount -a -t ext4,ext3,ext2 2>/dev/null  # everything but the root, which is busy
    drbdadm down all >/dev/null 2>&1
    umount -a -t hostfs 2>/dev/null
    mount -n -o remount,ro /
    sync
    echo o >/proc/sysrq-trigger
    read -r -t 10 -u 4 _
    say "FATAL: power off did not happen"
}

handle() {  # ID
    local id=$1 base=/lab/q/$1 rc=254
    local -a f=()
    if ! mapfile -d '' -t f <"$base.req" || ((${#f[@]} < 5)); then
        printf 'done %s 254\n' "$id" >&3
        return
    fi
    local mode=${f[0]} tmo=${f[1]} cwd=${f[2]} stdin=${f[3]} log=${f[4]}
    local -a argv=("${f[@]:5}")
    case $mode in
        run)
            # timeout(1) kills the command's whole process group when it overruns.
            (cd "$cwd" && exec timeout -k 2 "$tmo" "${argv[@]}") <"$stdin" >"$base.out" 2>"$base.err" 3>&- 4>&-
            rc=$?
            ;;
        read)
            # A (kernel) file read by this shell itself: no fork, no exec, so the host can poll
            # /proc/drbd every 100 ms without loading the node.  rc 1: unreadable.
            local -a lines=()
            if mapfile -t lines 2>"$base.err" <"${argv[0]}"; then
                ((${#lines[@]})) && printf '%s\n' "${lines[@]}" >"$base.out"
                rc=0
            else
                rc=1
            fi
            ;;
        spawn)
            # A daemon of the test: own session, output to a guest-local log, channel closed.
            (cd "$cwd" && exec setsid "${argv[@]}") <"$stdin" >>"$log" 2>&1 3>&- 4>&- &
            rc=$!
            ;;
        poweroff)
            printf 'done %s 0\n' "$id" >&3
            poweroff_node
            return
            ;;
    esac
    printf 'done %s %s\n' "$id" "$rc" >&3
}

read -r uptime _ </proc/uptime
say "ready after ${uptime}s"
printf 'ready %s %s\n' "$host" "$uptime" >&3

while :; do
    if IFS= read -r line <&3; then
        line=${line%$'\r'}
        [[ $line =~ ^[0-9]+$ ]] && handle "$line"
    else
        # EOF or an interrupted read: the host side is gone or a signal came in; never spin.
        read -r -t 0.2 -u 4 _
    fi
done
