"""How nodes reach each other: the transport contract, peer streams, an in-memory network.

- `Transport` / `Inbound`: the contract between a node and its transport.
- `StreamTransport`: one long-lived, authenticated, framed stream per pair of
  members, on the node's own port (the production transport).
- `MemoryNetwork`: an in-process network with fault knobs (tests).
- the Raft message codec (msgpack between nodes; the course routes' JSON).
"""

from typing import TYPE_CHECKING

from trioraft.transport._codec import (
    CodecError,
    append_entries_from_json,
    append_response_to_json,
    decode_messages,
    encode_messages,
    request_vote_from_json,
    vote_response_to_json,
)
from trioraft.transport._conn import StreamConfig
from trioraft.transport._frames import PREAMBLE, FrameError, FrameType
from trioraft.transport._handshake import HandshakeError, PeerIdentity
from trioraft.transport._memory import MemoryNetwork, MemoryTransport
from trioraft.transport._protocol import (
    TOKEN_HEADER,
    ChunkReader,
    Inbound,
    LinkError,
    RelayAnswer,
    RelayCode,
    SnapshotOffer,
    Transport,
)
from trioraft.transport._stream import StreamTransport, peer_address, probe_peer

__all__ = [
    "PREAMBLE",
    "TOKEN_HEADER",
    "ChunkReader",
    "CodecError",
    "FrameError",
    "FrameType",
    "HandshakeError",
    "Inbound",
    "LinkError",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerIdentity",
    "RelayAnswer",
    "RelayCode",
    "SnapshotOffer",
    "StreamConfig",
    "StreamTransport",
    "Transport",
    "append_entries_from_json",
    "append_response_to_json",
    "decode_messages",
    "encode_messages",
    "peer_address",
    "probe_peer",
    "request_vote_from_json",
    "vote_response_to_json",
]

if TYPE_CHECKING:
    # Static proof that both transports keep the contract.
    def _conforms(stream: StreamTransport, memory: MemoryTransport) -> tuple[Transport, Transport]:
        return stream, memory
