"""failover-agent itself: the decisions that tie VRRP mastership to the storage, and the daemon.

The core (machine, guard, track, peerwire) decides and does no I/O, so simulations run the
daemon's own code; the adapters (chain, fs, probes, tickle, peer, daemon, control, cli) carry
the decisions out. agent is the top layer: it builds on vrrp, drbd and nfs, none of which
imports it.
"""
