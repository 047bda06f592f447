"""Seeded, structure-aware mutation of valid samples (the engine when atheris is absent, and
atheris's custom mutator when it is there).

Random bytes alone almost never get past a parser's first check (a checksum, an HMAC, TOML's
syntax), so most mutations here keep the input's shape and change one thing that a parser
has to judge: a field's bits, a number swapped for a boundary value, a key dropped or
repeated, a value of another type, a nesting deeper than the interpreter's recursion limit.
Everything draws from the `random.Random` it is given, so a seed replays a run exactly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

#: numbers at the edges of what the parsers range-check or convert (int/float limits, digit limits)
BOUNDARY_NUMBERS: tuple[bytes, ...] = (
    b"0", b"-0", b"1", b"-1", b"7", b"255", b"256", b"4095", b"4096", b"65535", b"65536", b"2147483648",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809", b"0.0", b"0.5", b"0.015", b"1e-9",
    b"1e308", b"1e309", b"-1e400", b"nan", b"-nan", b"inf", b"-inf", b"NaN", b"Infinity", b"1_000", b"0x10",
    b"0o7", b"1e", b".5", b"5.", b"\xc2\xb2", b"\xd9\xa3", b"1" * 400, b"9" * 4301, b"-" + b"9" * 5000,
)

#: values of every type, in TOML and JSON spelling, for "the key has the wrong type"
OTHER_TYPES: tuple[bytes, ...] = (
    b'"x"', b'""', b"true", b"false", b"null", b"[]", b"[1, 2]", b'["a", "a"]', b"{}", b"{a = 1}", b'{"a": 1}',
    b"[{}]", b"1979-05-27T07:32:00Z", b"'literal'", b'"""multi\nline"""',
)

#: odd text: controls, separators str.splitlines() knows but TOML does not, BOM, invalid UTF-8
ODD_TEXT: tuple[bytes, ...] = (
    b"\x00", b"\x7f", b"\t", b"\r", b"\r\n", b"\x0b", b"\x0c", b"\x1c", b"\xc2\x85", b"\xe2\x80\xa8", b"\xef\xbb\xbf",
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\", b'"', b"#", b"!", b"{", b"}", b"[", b"]", b":", b"=", b",", b"/",
    b"..", b"%", b" " * 64, b"A" * 5000,
)

_INTERESTING_BYTES = (0x00, 0x01, 0x0F, 0x10, 0x20, 0x21, 0x31, 0x45, 0x7F, 0x80, 0xFE, 0xFF)
_INTERESTING_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_STRING = re.compile(rb'"[^"\n]*"')
_VALUE = re.compile(_NUMBER.pattern + rb"|" + _STRING.pattern + rb"|\b(?:true|false|null)\b")
_WORD = re.compile(rb"[A-Za-z_][\w.-]*")
_NON_SPACE = re.compile(rb"\S+")
_NESTING = (2, 64, 1100)

Op = Callable[["Mutator", bytes, random.Random], bytes]


class Mutator:
    """Stacks a few random edits on one sample; `text` adds token- and line-level edits.

    `samples` is kept by reference: splices then also take from what the caller adds to it later.
    """

    def __init__(self, samples: Sequence[bytes], text: bool, max_len: int) -> None:
        self.samples = samples
        self.max_len = max_len
        self.words = sorted({w for s in samples for w in _WORD.findall(s)}) or [b"x"]
        self.ops: tuple[Op, ...] = _BYTE_OPS + (_TEXT_OPS if text else ())

    def mutate(self, data: bytes, rng: random.Random) -> bytes:
        for _ in range(1 + min(int(rng.expovariate(0.6)), 7)):
            data = rng.choice(self.ops)(self, data, rng)
        return data[: self.max_len]

    def random_bytes(self, rng: random.Random) -> bytes:
        return rng.randbytes(rng.randrange(self.max_len if rng.random() < 0.1 else 64))

    def other(self, rng: random.Random) -> bytes:
        return rng.choice(self.samples)


def _pos(data: bytes, rng: random.Random) -> int:
    return rng.randrange(len(data) + 1)


def _span(data: bytes, rng: random.Random) -> tuple[int, int]:
    start = _pos(data, rng)
    return start, min(len(data), start + 1 + int(rng.expovariate(0.2)))


# -- byte level ------------------------------------------------------------------------------


def _flip_bit(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def _set_byte(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    value = rng.choice(_INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
    return data[:i] + bytes([value]) + data[i + 1:]


def _set_word(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    """A 16- or 32-bit field set to a boundary value: counts, lengths, intervals, checksums."""
    size = rng.choice((2, 4))
    if len(data) < size:
        return data
    i = rng.randrange(len(data) - size + 1)
    return data[:i] + (rng.choice(_INTERESTING_WORDS) % (1 << 8 * size)).to_bytes(size, "big") + data[i + size:]


def _insert_bytes(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    i = _pos(data, rng)
    return data[:i] + rng.randbytes(1 + int(rng.expovariate(0.3))) + data[i:]


def _delete(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    start, end = _span(data, rng)
    return data[:start] + data[end:]


def _duplicate(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    start, end = _span(data, rng)
    return data[:end] + data[start:end] + data[end:]


def _truncate(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    return data[:_pos(data, rng)]


def _splice(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    other = m.other(rng)
    return data[:_pos(data, rng)] + other[_pos(other, rng):]


_BYTE_OPS: tuple[Op, ...] = (_flip_bit, _set_byte, _set_word, _insert_bytes, _delete, _duplicate, _truncate, _splice)


# -- token and line level (text formats) -----------------------------------------------------


def _replace_token(data: bytes, rng: random.Random, token: re.Pattern[bytes],
                   make: Callable[[bytes], bytes]) -> bytes:
    """The first `token` from a random point on (or from the start) replaced by `make(token)`.

    Searching from a random point costs what one token costs; listing every token first made
    the mutator, not the parsers, the bulk of a run on kilobyte inputs.
    """
    found = token.search(data, _pos(data, rng)) or token.search(data)
    if found is None:
        return data
    return data[:found.start()] + make(found.group()) + data[found.end():]


def _boundary_number(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    return _replace_token(data, rng, _NUMBER, lambda _t: rng.choice(BOUNDARY_NUMBERS))


def _other_type(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    return _replace_token(data, rng, _VALUE, lambda _t: rng.choice(OTHER_TYPES))


def _other_word(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    """A key or keyword swapped for another one the format knows: misplaced, repeated, wrong section."""
    return _replace_token(data, rng, _WORD, lambda _t: rng.choice(m.words))


def _odd_string(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    return _replace_token(data, rng, _STRING, lambda _t: b'"' + rng.choice(ODD_TEXT + BOUNDARY_NUMBERS) + b'"')


def _insert_odd(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    i = _pos(data, rng)
    return data[:i] + rng.choice(ODD_TEXT + BOUNDARY_NUMBERS + OTHER_TYPES) + data[i:]


def _nest(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    """A value wrapped in arrays or tables deeper than Python's recursion limit (1000)."""
    depth = rng.choice(_NESTING)
    opening, closing = rng.choice(((b"[", b"]"), (b"{", b"}"), (b'{"a":', b"}"), (b"{a=", b"}")))
    return _replace_token(data, rng, _NON_SPACE, lambda t: opening * depth + t + closing * depth)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _drop_line(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def _duplicate_line(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"\n".join(lines)


def _swap_lines(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _foreign_line(m: Mutator, data: bytes, rng: random.Random) -> bytes:
    """A line of another sample: a key from another section, a statement from another block."""
    lines, other = _lines(data), _lines(m.other(rng))
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(other))
    return b"\n".join(lines)


_TEXT_OPS: tuple[Op, ...] = (_boundary_number, _boundary_number, _other_type, _other_word, _odd_string, _insert_odd,
                             _nest, _drop_line, _duplicate_line, _swap_lines, _foreign_line)
