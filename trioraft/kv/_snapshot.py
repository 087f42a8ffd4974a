"""The snapshot format of the key-value state machine, encoded and decoded in frames.

Format 2 (what `encode_frames` writes)::

    b"TRKV\\x02"  then frames; a frame is a 4-byte big-endian length and msgpack:
      header   [applied_index, n_pairs, n_clients]
      data     [[key, ...], [value, ...]]     up to FRAME_PAIRS pairs, and a frame
                                              closes early once its keys and values
                                              reach FRAME_CHARS characters
      clients  [ClientState, ...]             up to FRAME_CLIENTS per frame
    pairs in ascending key order, clients in ascending last_index order.

Canonical: the framing depends only on the state, so equal states give equal
bytes (`state_digest` relies on it). Every call here handles one frame, so no
single call (msgspec holds the GIL) runs long: a million-key snapshot is
encoded and decoded in thousands of short steps. The encoder reads captured
key blocks, which are never mutated (see `_sorted`), and values through the
machine's snapshot view (see `_machine.KVStateMachine.snapshot_chunks`), so
it may run in a thread while entries are applied.

Format 1 (the previous one: one msgpack array ``[1, applied_index, pairs,
clients]``) is still restored, so a data dir written by the previous version
starts. Its exactly-once records held full results in another shape; they
are not converted: each client's floor is raised to its highest recorded seq,
so a retry of a request recorded before the upgrade answers request_expired
(outcome unknown) instead of being applied twice.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Iterator
from itertools import pairwise
from typing import Any

import msgspec

from ._commands import parse_request_id
from ._dedup import ClientState, DedupTable
from ._errors import InvalidCommand, InvalidSnapshot
from ._limits import MAX_INDEX, MAX_SEQ
from ._sorted import Captured, SortedKeys

__all__ = ["FRAME_CHARS", "FRAME_CLIENTS", "FRAME_PAIRS", "MAGIC", "Restored", "decode",
           "decode_steps", "encode_frames"]

MAGIC = b"TRKV\x02"
FRAME_PAIRS = 1024
FRAME_CHARS = 256 * 1024
FRAME_CLIENTS = 64
_LEN = struct.Struct(">I")

_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(tuple[int, int, int])
_data_decoder = msgspec.msgpack.Decoder(tuple[list[str], list[str]])
_clients_decoder = msgspec.msgpack.Decoder(list[ClientState])


def _frame(obj: Any) -> bytes:
    payload = _encoder.encode(obj)
    return _LEN.pack(len(payload)) + payload


def encode_frames(
    applied_index: int,
    n_pairs: int,
    blocks: Captured,
    values_of: Callable[[tuple[str, ...]], list[str]],
    clients: list[tuple[str, int, int, dict[int, bytes]]],
) -> Iterator[bytes]:
    """The snapshot as a sequence of byte strings (MAGIC, then one per frame).

    `values_of(block)` gives the captured values of a block of captured keys.
    """
    yield MAGIC
    yield _frame((applied_index, n_pairs, len(clients)))
    keys: list[str] = []
    values: list[str] = []
    chars = 0
    for block_keys in blocks:
        for key, value in zip(block_keys, values_of(block_keys), strict=True):
            keys.append(key)
            values.append(value)
            chars += len(key) + len(value)
            if len(keys) == FRAME_PAIRS or chars >= FRAME_CHARS:
                yield _frame((keys, values))
                keys, values, chars = [], [], 0
    if keys:
        yield _frame((keys, values))
    for start in range(0, len(clients), FRAME_CLIENTS):
        yield _frame([
            ClientState(name, last, floor, sorted(records.items()))
            for name, last, floor, records in clients[start:start + FRAME_CLIENTS]
        ])


class Restored:
    """What `decode` rebuilt: a consistent state, ready to be swapped in."""

    def __init__(self, applied_index: int, keys: SortedKeys, data: dict[str, str],
                 data_bytes: int, dedup: DedupTable) -> None:
        self.applied_index = applied_index
        self.keys = keys
        self.data = data
        self.data_bytes = data_bytes
        self.dedup = dedup


def _frames(view: memoryview) -> Iterator[memoryview]:
    offset = len(MAGIC)
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidSnapshot("The snapshot ends inside a frame header.")
        (size,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidSnapshot("The snapshot ends inside a frame.")
        yield view[offset:offset + size]
        offset += size


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def decode(data: bytes | bytearray | memoryview, window: int, max_clients: int,
           max_bytes: int) -> Restored:
    """Decode a snapshot of either format; raises InvalidSnapshot, never anything else."""
    steps = decode_steps(data, window, max_clients, max_bytes)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            restored: Restored = done.value
            return restored


def decode_steps(data: bytes | bytearray | memoryview, window: int, max_clients: int,
                 max_bytes: int) -> Generator[None, None, Restored]:
    """`decode` in short steps: one frame per `next()`; the generator returns the result.

    Raises InvalidSnapshot (from `next()`), never anything else. The caller
    may stop at any step: nothing outside the generator has changed.
    """
    try:
        view = memoryview(data).cast("B")
        if bytes(view[:len(MAGIC)]) == MAGIC:
            return (yield from _decode_v2(view, window, max_clients, max_bytes))
        return _decode_v1(view, window, max_clients, max_bytes)
    except InvalidSnapshot:
        raise
    except (msgspec.MsgspecError, ValueError, TypeError, struct.error) as exc:
        # ValueError includes UnicodeEncodeError (lone surrogates cannot occur
        # from msgpack, but be total) and the dedup table's consistency errors.
        raise InvalidSnapshot(f"The snapshot is not valid: {exc}") from None


def _check_pairs(keys: list[str], values: list[str], previous: str | None) -> int:
    if len(keys) != len(values) or not keys:
        raise InvalidSnapshot("A data frame of the snapshot is empty or uneven.")
    if not keys[0] or (previous is not None and previous >= keys[0]):
        raise InvalidSnapshot("The snapshot's keys are empty, unsorted or repeated.")
    if any(a >= b for a, b in pairwise(keys)):
        raise InvalidSnapshot("The snapshot's keys are empty, unsorted or repeated.")
    return sum(map(_utf8_len, keys)) + sum(map(_utf8_len, values))


def _decode_v2(view: memoryview, window: int, max_clients: int,
               max_bytes: int) -> Generator[None, None, Restored]:
    frames = _frames(view)
    header = next(frames, None)
    if header is None:
        raise InvalidSnapshot("The snapshot has no header.")
    applied_index, n_pairs, n_clients = _header_decoder.decode(header)
    if not 0 <= applied_index <= MAX_INDEX or n_pairs < 0 or n_clients < 0:
        raise InvalidSnapshot("The snapshot's header is out of range.")
    items, data, data_bytes = SortedKeys(), dict[str, str](), 0
    previous: str | None = None
    while len(items) < n_pairs:
        frame = next(frames, None)
        if frame is None:
            raise InvalidSnapshot("The snapshot has fewer pairs than its header says.")
        keys, values = _data_decoder.decode(frame)
        data_bytes += _check_pairs(keys, values, previous)
        previous = keys[-1]
        if len(items) + len(keys) > n_pairs:
            raise InvalidSnapshot("The snapshot has more pairs than its header says.")
        items.extend_sorted(keys)
        data.update(zip(keys, values, strict=True))
        yield
    clients: list[ClientState] = []
    while len(clients) < n_clients:
        frame = next(frames, None)
        if frame is None:
            raise InvalidSnapshot("The snapshot has fewer clients than its header says.")
        clients.extend(_clients_decoder.decode(frame))
        yield
    if len(clients) != n_clients or next(frames, None) is not None:
        raise InvalidSnapshot("The snapshot has more clients or frames than its header says.")
    dedup = DedupTable.from_state(clients, window, max_clients, max_bytes,
                                  applied_index=applied_index)
    return Restored(applied_index, items, data, data_bytes, dedup)


class _V1Client(msgspec.Struct, array_like=True):
    client: str
    last_index: int
    floor: int
    results: list[tuple[int, Any]]


class _V1(msgspec.Struct, array_like=True):
    version: int
    applied_index: int
    data: list[tuple[str, str]]
    clients: list[_V1Client]


def _decode_v1(view: memoryview, window: int, max_clients: int, max_bytes: int) -> Restored:
    snap = msgspec.msgpack.decode(view, type=_V1)
    if snap.version != 1:
        raise InvalidSnapshot(f"Unsupported snapshot version {snap.version}.")
    if not 0 <= snap.applied_index <= MAX_INDEX:
        raise InvalidSnapshot("The snapshot's applied index is out of range.")
    items, data, data_bytes = SortedKeys(), dict[str, str](), 0
    if snap.data:
        keys = [k for k, _ in snap.data]
        values = [v for _, v in snap.data]
        data_bytes = _check_pairs(keys, values, None)
        items.extend_sorted(keys)
        data.update(snap.data)
    clients = _v1_clients(snap.clients, snap.applied_index, max_clients)
    dedup = DedupTable.from_state(clients, window, max_clients, max_bytes,
                                  applied_index=snap.applied_index)
    return Restored(snap.applied_index, items, data, data_bytes, dedup)


def _v1_clients(old: list[_V1Client], applied_index: int, max_clients: int) -> list[ClientState]:
    """The format-1 clients that today's rules accept, newest `max_clients`, records dropped.

    Deterministic (it depends only on the snapshot), so every replica that
    restores the same old snapshot holds the same table.
    """
    kept: dict[str, ClientState] = {}
    for c in sorted(old, key=lambda c: c.last_index):
        seqs = [seq for seq, _ in c.results if isinstance(seq, int)]
        floor = max([c.floor, *seqs])
        try:
            parse_request_id(f"{c.client}:0")
        except InvalidCommand:
            continue
        if not 0 < c.last_index <= applied_index or not -1 <= floor <= MAX_SEQ:
            continue
        kept.pop(c.client, None)
        kept[c.client] = ClientState(c.client, c.last_index, floor, [])
    states = list(kept.values())[-max_clients:]
    # from_state wants strictly increasing last indexes: keep the last of equal ones.
    return [s for s, n in zip(states, [*states[1:], None], strict=True)
            if n is None or n.last_index > s.last_index]
