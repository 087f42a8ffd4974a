"""How nodes reach each other: peer links (HTTP, in-memory) and the wire codec."""

from trioraft.transport._codec import (
    CodecError,
    append_entries_from_json,
    append_response_to_json,
    decode_messages,
    encode_messages,
    meta_from_wire,
    meta_to_wire,
    request_vote_from_json,
    vote_response_to_json,
)
from trioraft.transport._http_client import ConnectError, HttpPool, RequestError, Response
from trioraft.transport._links import (
    SNAPSHOT_HEADER,
    TOKEN_HEADER,
    HttpPeerLink,
    LinkError,
    MemoryLink,
    MemoryNetwork,
    PeerLink,
)

__all__ = [
    "SNAPSHOT_HEADER",
    "TOKEN_HEADER",
    "CodecError",
    "ConnectError",
    "HttpPeerLink",
    "HttpPool",
    "LinkError",
    "MemoryLink",
    "MemoryNetwork",
    "PeerLink",
    "RequestError",
    "Response",
    "append_entries_from_json",
    "append_response_to_json",
    "decode_messages",
    "encode_messages",
    "meta_from_wire",
    "meta_to_wire",
    "request_vote_from_json",
    "vote_response_to_json",
]
