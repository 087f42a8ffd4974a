"""The peer stream's framing: a preamble, then length-prefixed, typed msgpack frames.

    connection = PREAMBLE, frame*
    frame      = length: u32 big-endian, type: u8, payload: msgpack (length - 1 bytes)

`length` counts the type byte and the payload; a frame whose length is 0 or
above the receiver's limit is a protocol error that closes the stream (the
receiver checks the length *before* buffering the payload, so a hostile
length never allocates anything). The payload of each type is a msgspec
Struct encoded as a msgpack array; msgspec validates types and ranges while
decoding, and every count, string and byte string is bounded.

The preamble starts with a NUL byte, which no HTTP/1 request (a method
token), HTTP/2 preface ("PRI") or TLS record (0x16) can start with: that one
byte is all the node's port needs to tell a peer stream from an HTTP
connection. Its text names the protocol family; the version is negotiated in
HELLO/WELCOME, so the preamble never changes.

Frame types are grouped so that the stream can later carry client requests
too (a binary client protocol beside the HTTP API):

    1-7     handshake and control: HELLO, WELCOME, AUTH, ERROR
    8-15    link: PING
    16-31   Raft: RAFT (a batch of Raft messages)
    32-47   relayed client writes: RELAY, RELAY_ANSWER
    48-63   snapshot transfer: SNAP_CHUNK, SNAP_ACK
    64-127  reserved for client requests (not used yet)
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from trioraft.transport._codec import MemberId, Seq, WireInstallSnapshot

__all__ = [
    "HEADER",
    "PREAMBLE",
    "PROTOCOL_VERSIONS",
    "Auth",
    "Error",
    "FrameError",
    "FrameType",
    "Hello",
    "Relay",
    "RelayAnswer",
    "SnapAck",
    "SnapChunk",
    "Welcome",
    "decode",
    "encode",
]

PREAMBLE = b"\x00trioraft-peer\r\n"
PROTOCOL_VERSIONS = (1,)  # what this build speaks; WELCOME picks one
HEADER = struct.Struct(">IB")  # length (type byte + payload), type

MAX_RELAY_WRITES = 4096
MAX_NONCE = 64
MAX_PROOF = 64
MAX_CLUSTER_ID = 128


class FrameError(ValueError):
    """A frame that breaks the protocol: the stream that carried it is closed."""


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    AUTH = 3
    ERROR = 4
    PING = 8
    RAFT = 16
    RELAY = 32
    RELAY_ANSWER = 33
    SNAP_CHUNK = 48
    SNAP_ACK = 49


ClusterId = Annotated[str, Meta(min_length=1, max_length=MAX_CLUSTER_ID)]
Nonce = Annotated[bytes, Meta(min_length=16, max_length=MAX_NONCE)]
Proof = Annotated[bytes, Meta(max_length=MAX_PROOF)]


class Hello(msgspec.Struct, array_like=True):
    """Dialer -> acceptor, right after the preamble."""

    versions: Annotated[list[Annotated[int, Meta(ge=0, le=255)]], Meta(max_length=16)]
    cluster: ClusterId
    src: MemberId  # the dialer's member id
    dst: MemberId  # the member id the dialer expects to reach
    nonce: Nonce


class Welcome(msgspec.Struct, array_like=True):
    """Acceptor -> dialer: the chosen version, its identity and proof of the secret."""

    version: Annotated[int, Meta(ge=0, le=255)]
    cluster: ClusterId
    src: MemberId  # the acceptor's member id
    nonce: Nonce
    proof: Proof  # b"" when the acceptor has no cluster token


class Auth(msgspec.Struct, array_like=True):
    """Dialer -> acceptor: the dialer's proof of the secret."""

    proof: Proof


class Error(msgspec.Struct, array_like=True):
    """Either side, before closing: why (a refused handshake, a protocol error)."""

    code: Annotated[str, Meta(max_length=64)]
    message: Annotated[str, Meta(max_length=1024)]


class Relay(msgspec.Struct, array_like=True):
    """Relayed client writes: the sender asks the receiver (its leader) to propose them."""

    id: Seq
    timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)]
    datas: Annotated[list[bytes], Meta(min_length=1, max_length=MAX_RELAY_WRITES)]


class RelayAnswer(msgspec.Struct, array_like=True):
    """One outcome code per relayed write, and the node's encoding of the results."""

    id: Seq
    codes: Annotated[list[Annotated[int, Meta(ge=0, le=255)]], Meta(max_length=MAX_RELAY_WRITES)]
    results: bytes


class SnapChunk(msgspec.Struct, array_like=True):
    """A piece of a snapshot transfer: `msg.meta`, `size` bytes with CRC32 `crc`."""

    transfer: Seq  # the sender's id for this transfer, unique on the stream
    msg: WireInstallSnapshot  # the InstallSnapshot the core emitted
    size: Annotated[int, Meta(ge=0, lt=2**62)]
    offset: Annotated[int, Meta(ge=0, lt=2**62)]
    data: bytes
    last: bool
    crc: Annotated[int, Meta(ge=0, lt=2**32)]  # CRC32 of the whole data, in every chunk


class SnapAck(msgspec.Struct, array_like=True):
    """The receiver staged a chunk (flow control) or refused the transfer (`error`)."""

    transfer: Seq
    offset: Annotated[int, Meta(ge=0, lt=2**62)]  # bytes staged so far
    error: Annotated[str, Meta(max_length=1024)] | None = None


_TYPES: dict[FrameType, type[msgspec.Struct]] = {
    FrameType.HELLO: Hello,
    FrameType.WELCOME: Welcome,
    FrameType.AUTH: Auth,
    FrameType.ERROR: Error,
    FrameType.RELAY: Relay,
    FrameType.RELAY_ANSWER: RelayAnswer,
    FrameType.SNAP_CHUNK: SnapChunk,
    FrameType.SNAP_ACK: SnapAck,
}
_DECODERS = {t: msgspec.msgpack.Decoder(cls) for t, cls in _TYPES.items()}
_encoder = msgspec.msgpack.Encoder()

S = TypeVar("S", bound=msgspec.Struct)


def frame(ftype: FrameType, payload: bytes = b"") -> bytes:
    """One whole frame: header and payload."""
    return HEADER.pack(len(payload) + 1, ftype) + payload


def encode(ftype: FrameType, obj: Any = None) -> bytes:
    """A frame of `ftype` carrying `obj` (a Struct of the type's class; None for PING)."""
    return frame(ftype, b"" if obj is None else _encoder.encode(obj))


def decode(ftype: FrameType, payload: bytes, cls: type[S]) -> S:
    """Decode a payload of type `ftype`, which must carry `cls`; FrameError on anything else."""
    if _TYPES.get(ftype) is not cls:
        raise FrameError(f"frame type {ftype} does not carry {cls.__name__}")
    try:
        obj = _DECODERS[ftype].decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FrameError(f"malformed {ftype.name} frame: {exc}") from None
    assert isinstance(obj, cls)
    return obj


def frame_type(code: int) -> FrameType:
    try:
        return FrameType(code)
    except ValueError:
        raise FrameError(f"unknown frame type {code}") from None
