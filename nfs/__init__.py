"""NFS server backends (storage failover; see issue 3)."""
