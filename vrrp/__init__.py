"""VRRP (RFC 3768 for IPv4 / RFC 5798 for IPv4 and IPv6), usable without the rest of the agent.

packet (the codec) and router (the state machine) are sans-I/O; socket, rawsock, vip and
link are the kernel side. vrrp imports nothing from agent, drbd or nfs: it knows nothing of
storage, and it is the agent that holds mastership back until the data is served.
"""
