"""VRRP (RFC 3768 / RFC 5798) for failover-agent: packets, router state machine, sockets, VIPs."""
