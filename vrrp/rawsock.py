"""Raw-socket helpers shared by every raw socket of the agent: interface binding and classic BPF.

The VRRP sockets (vrrp.socket), the witness pinger (agent.probes) and the tickle-ACK sender
(agent.tickle) all bind a raw socket to one interface, and the first two attach a classic
BPF filter so the kernel drops what would only wake the daemon for nothing. The filters are
written as lists of `(code, jt, jf, k)` instructions with the opcodes below; `run_program`
interprets them in Python so tests can check a filter without a kernel. These live in vrrp
because vrrp imports nothing of the agent, and the agent may import vrrp.
"""

from __future__ import annotations

import ctypes
import socket
import struct

#: one classic BPF program: (code, jt, jf, k) instructions, run over what the socket receives
#: (an AF_INET raw socket: the whole IP datagram; an AF_INET6 one: the payload after the IPv6 header)
BpfProgram = list[tuple[int, int, int, int]]

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; Python's socket module does not name it

# classic BPF opcodes
LDX_MSH = 0xB1  # X = 4 * (pkt[k] & 0xf)
LDX_IMM = 0x01  # X = k
LD_B_IND = 0x50  # A = pkt[X + k]
JEQ = 0x15
JGE = 0x35
RET = 0x06


def bind_to_device(sock: socket.socket, ifname: str) -> None:
    """Send and receive through `ifname` only (SO_BINDTODEVICE), whatever the routes say."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())


def run_program(prog: BpfProgram, pkt: bytes) -> bool:
    """Interpret a filter in Python (for tests; the kernel runs the real one)."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == LDX_MSH:
            if k >= len(pkt):
                return False
            x = 4 * (pkt[k] & 0xF)
        elif code == LDX_IMM:
            x = k
        elif code == LD_B_IND:
            if x + k >= len(pkt):
                return False
            a = pkt[x + k]
        elif code in (JEQ, JGE):
            hit = a == k if code == JEQ else a >= k
            pc += jt if hit else jf
        elif code == RET:
            return k != 0
        else:
            raise ValueError(f"unknown BPF opcode {code:#x}")


def attach_filter(sock: socket.socket, prog: BpfProgram) -> None:
    """Assemble `prog` into a sock_fprog and attach it (replacing any filter attached before)."""
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
