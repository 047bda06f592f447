"""DRBD status model and drbdadm adapter (storage failover; see issue 3)."""
