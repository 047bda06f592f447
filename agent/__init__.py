"""failover-agent: config, daemon wiring and the failoverctl command."""
