"""failover-agent itself: the decisions that tie VRRP mastership to the storage, and the daemon.

The core decides and does no I/O: `node` composes the router with machine, guard, track and
peerwire and turns `events` into `actions`, so the two-node simulation runs the daemon's own
decisions. The adapters (instance, chain, fs, probes, tickle, peer, daemon, control, cli)
carry the actions out. agent is the top layer: it builds on vrrp, drbd and nfs, none of
which imports it.
"""
