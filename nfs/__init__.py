"""The NFS server on the replicated filesystem: kernel nfsd or nfs-ganesha behind one Backend.

The agent's chain starts and stops it and moves its state folder with the data. nfs imports
nothing from agent or vrrp (its settings are its own type, nfs.settings), so a backend can
be driven and tested without the daemon.
"""
