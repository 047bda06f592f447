"""DRBD as the agent sees it, and the process and mount helpers every layer shares.

status is a pure model of DRBD's own output; drbdadm promotes and demotes with typed errors.
drbd is the lowest layer and imports nothing of ours, which is why runner (subprocesses)
and mounts (a busy unmount) live here: agent and nfs both build on them.
"""
