"""Opening a peer stream: who is on the other end, and may they talk to us.

    dialer                                   acceptor
    PREAMBLE, HELLO(versions, cluster,  -->  checks cluster, dst == itself,
          src, dst, nonce_d)                 src a known peer, a common version
                                        <--  WELCOME(version, cluster, src,
                                                     nonce_a, proof_a)   or ERROR
    checks the acceptor's proof        -->   AUTH(proof_d)
                                             checks proof_d (constant time)
    ... frames both ways ...

With a cluster token, each proof is HMAC-SHA256(token, transcript) where the
transcript names the role, the version, the cluster, both member ids and both
nonces: the token never crosses the wire, a proof cannot be replayed on
another stream (fresh nonces) or reflected (the role is in it), and both ends
prove they hold the token (mutual). Without a token on either end, the proof
is empty and must be empty on both: a node with a token never talks to one
without. The acceptor reads nothing but these two small frames (bounded in
size and time) before the dialer is authenticated.

The stream is bound to the peer's member id: every message arriving on it
must carry that `src` (checked per message by the connection).

With peer TLS (`PeerAuth.tls`, the context this node dials with), the stream
runs inside mutual TLS with certificates of the cluster CA, and the TLS
identity is bound to the member ids of the handshake
(`trioraft.tls.identity_error`, the one function that decides it):

- the acceptor refuses, before reading anything, a connection without a
  verified certificate (`tls_required`: plaintext, or no certificate), and
  after HELLO one whose certificate is not the cluster CA's or does not name
  the member the dialer claims to be (`identity`);
- the dialer refuses an acceptor whose certificate does not name the member it
  meant to reach (`identity`), before sending anything.

The token proof runs as well when both are configured (defence in depth).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import trio

from trioraft.tls import NameOf, TlsPeer, identity_error, static_name_of
from trioraft.transport._frames import (
    PREAMBLE,
    PROTOCOL_VERSIONS,
    Auth,
    Error,
    FrameError,
    FrameType,
    Hello,
    Welcome,
    decode,
    encode,
)
from trioraft.transport._reader import FrameReader

__all__ = ["HandshakeError", "PeerAuth", "PeerIdentity", "accept", "dial"]

MAX_HANDSHAKE_FRAME = 4096
NONCE_BYTES = 16


class HandshakeError(Exception):
    """The stream was refused (by us or by the peer); `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of an open stream."""

    member_id: str
    cluster_id: str
    version: int
    authenticated_by: str  # "tls+token", "tls", "token" or "none"


class PeerAuth:
    """How peers prove themselves: the shared cluster token, peer TLS (the context this
    node dials with: certificates of the cluster CA both ways), both, or nothing
    (insecure)."""

    def __init__(self, token: str | None, tls: ssl.SSLContext | None = None) -> None:
        self._key = token.encode("utf-8") if token else None
        self.tls = tls

    @property
    def method(self) -> str:
        """The token part: "token" or "none"."""
        return "token" if self._key is not None else "none"

    @property
    def methods(self) -> str:
        """Everything a peer proved: "tls+token", "tls", "token" or "none"."""
        if self.tls is None:
            return self.method
        return "tls+token" if self._key is not None else "tls"

    def proof(self, role: str, transcript: bytes) -> bytes:
        if self._key is None:
            return b""
        return hmac.new(self._key, role.encode() + b"\0" + transcript, hashlib.sha256).digest()

    def verify(self, role: str, transcript: bytes, proof: bytes) -> bool:
        # Constant time: compare_digest's running time does not depend on
        # where the first differing byte is.
        return hmac.compare_digest(self.proof(role, transcript), proof)


def _transcript(
    version: int, cluster: str, dialer: str, acceptor: str, nonce_d: bytes, nonce_a: bytes
) -> bytes:
    # msgpack of a fixed-shape array: unambiguous whatever the ids contain.
    return msgspec.msgpack.encode(
        ["trioraft-peer", version, cluster, dialer, acceptor, nonce_d, nonce_a]
    )


async def _next(reader: FrameReader, expected: FrameType) -> bytes:
    got = await reader.next(MAX_HANDSHAKE_FRAME)
    if got is None:
        raise HandshakeError("closed", "the peer closed the stream during the handshake")
    ftype, payload = got
    if ftype is FrameType.ERROR:
        err = decode(ftype, payload, Error)
        raise HandshakeError(err.code or "refused", err.message)
    if ftype is not expected:
        raise FrameError(f"expected {expected.name} in the handshake, got {ftype.name}")
    return payload


async def _refuse(stream: trio.abc.SendStream, code: str, message: str) -> HandshakeError:
    with trio.move_on_after(1), contextlib.suppress(
        trio.BrokenResourceError, trio.ClosedResourceError, OSError
    ):
        await stream.send_all(encode(FrameType.ERROR, Error(code, message[:1024])))
    return HandshakeError(code, message)


async def dial(
    stream: trio.abc.Stream,
    reader: FrameReader,
    *,
    auth: PeerAuth,
    cluster: str,
    local: str,
    peer: str,
    tls_peer: TlsPeer | None = None,
    name_of: NameOf = static_name_of,
) -> PeerIdentity:
    """The dialer's half: we are `local`, we expect to reach `peer` in `cluster`.

    With peer TLS, `tls_peer` is the acceptor's verified certificate: it must name
    `peer`, or nothing is sent.
    """
    if auth.tls is not None and (why := identity_error(tls_peer, peer, name_of)) is not None:
        raise HandshakeError("identity", f"the node reached is not member {peer!r}: {why}")
    nonce_d = os.urandom(NONCE_BYTES)
    hello = Hello(list(PROTOCOL_VERSIONS), cluster, local, peer, nonce_d)
    await stream.send_all(PREAMBLE + encode(FrameType.HELLO, hello))
    w = decode(FrameType.WELCOME, await _next(reader, FrameType.WELCOME), Welcome)
    if w.version not in PROTOCOL_VERSIONS:
        raise await _refuse(stream, "version", f"version {w.version} was never offered")
    if w.cluster != cluster or w.src != peer:
        raise await _refuse(
            stream, "wrong_peer",
            f"expected member {peer!r} of cluster {cluster!r}, reached {w.src!r} of {w.cluster!r}",
        )
    transcript = _transcript(w.version, cluster, local, peer, nonce_d, w.nonce)
    if not auth.verify("acceptor", transcript, w.proof):
        if not w.proof and auth.method == "token":
            why = "the peer has no cluster token; this node has one"
        elif w.proof and auth.method == "none":
            why = "the peer requires a cluster token; this node has none"
        else:
            why = "the peer's proof of the cluster token is wrong (a different token?)"
        raise await _refuse(stream, "unauthorized", why)
    await stream.send_all(encode(FrameType.AUTH, Auth(auth.proof("dialer", transcript))))
    return PeerIdentity(peer, cluster, w.version, auth.methods)


async def accept(
    stream: trio.abc.Stream,
    reader: FrameReader,
    *,
    auth: PeerAuth,
    cluster: str,
    local: str,
    is_peer: Callable[[str], bool],
    tls_peer: TlsPeer | None = None,
    name_of: NameOf = static_name_of,
) -> PeerIdentity:
    """The acceptor's half; the preamble has been consumed by `reader` already.

    `tls_peer`: the dialer's verified certificate (None: plaintext, or none shown).
    """
    if auth.tls is not None and tls_peer is None:
        # Nothing is read from a peer that did not prove itself with TLS.
        raise await _refuse(
            stream, "tls_required",
            f"member {local!r} requires peer TLS: connect with TLS and a certificate from "
            "the cluster CA (--peer-tls-ca or --tls-ca, and a peer certificate)",
        )
    h = decode(FrameType.HELLO, await _next(reader, FrameType.HELLO), Hello)
    common = [v for v in h.versions if v in PROTOCOL_VERSIONS]
    if not common:
        raise await _refuse(stream, "version", f"no common protocol version in {h.versions}")
    if h.cluster != cluster:
        raise await _refuse(
            stream, "cluster_mismatch",
            f"this is member {local!r} of cluster {cluster!r}, not of cluster {h.cluster!r}",
        )
    if h.dst != local:
        raise await _refuse(
            stream, "wrong_member", f"this is member {local!r}, not {h.dst!r}"
        )
    if not is_peer(h.src):
        raise await _refuse(
            stream, "unknown_member", f"{h.src!r} is not a member this node talks to"
        )
    if auth.tls is not None and (why := identity_error(tls_peer, h.src, name_of)) is not None:
        raise await _refuse(stream, "identity", f"may not speak as member {h.src!r}: {why}")
    version = max(common)
    nonce_a = os.urandom(NONCE_BYTES)
    transcript = _transcript(version, cluster, h.src, local, h.nonce, nonce_a)
    welcome = Welcome(version, cluster, local, nonce_a, auth.proof("acceptor", transcript))
    await stream.send_all(encode(FrameType.WELCOME, welcome))
    a = decode(FrameType.AUTH, await _next(reader, FrameType.AUTH), Auth)
    if not auth.verify("dialer", transcript, a.proof):
        raise await _refuse(stream, "unauthorized", "missing or wrong cluster token")
    return PeerIdentity(h.src, cluster, version, auth.methods)
