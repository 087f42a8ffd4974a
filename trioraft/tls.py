"""TLS: the node's server context, the context peers dial with, and whom a certificate names.

One port carries clients and peers (`trioraft.server._listener`), and TLS is
terminated there, in our own code, so that a peer's certificate is visible to
the code that decides what the peer may do. The rules (docs/security.md):

* **Client TLS** (``--tls-cert/--tls-key``): the port speaks HTTPS. With
  ``--tls-client-ca`` every connection must present a certificate signed by
  that CA (or by the cluster CA: a member is also a client).
* **Peer TLS** (on when a cluster CA is configured: ``--peer-tls-ca``, or
  ``--tls-ca``): every peer stream and every request to the course routes
  ``/raft/*`` runs over TLS with a certificate *issued by the cluster CA*
  (``cluster_ca``: a CA of the verified chain is in the cluster CA bundle --
  a certificate from the client CA never makes its holder a peer), and the
  certificate must **name** the member the peer speaks as
  (:func:`identity_error`, the one function that decides it).
* A certificate's names (:func:`certificate_names`) are its subjectAltName
  DNS names and URIs, exactly as written; only a certificate with neither is
  named by its subject common name (RFC 6125, 6.4.4).
* Peers dial with their own peer certificate and verify the acceptor's
  against the cluster CA and the expected member's name (not the URL's host:
  an IP address in a URL is fine). They send :data:`PEER_SNI` as the server
  name, so that a node whose client-facing certificate differs from its peer
  certificate presents the peer one to peers (`server_context`).

Everything here is the standard library's `ssl`; nothing is read from the
network before a handshake has verified it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PEER_SNI",
    "NameOf",
    "ServerTls",
    "TlsError",
    "TlsPeer",
    "certificate_names",
    "check_peer_certificate",
    "identity_error",
    "load_ca_bundle",
    "peer_client_context",
    "server_tls",
    "static_name_of",
    "tls_peer_of",
]

#: The server name (SNI) peers dial with. ``.invalid`` is reserved (RFC 2606):
#: no client reaching a node by a real host name ever sends it.
PEER_SNI = "trioraft-peer.invalid"
_ALPN = ["http/1.1"]

#: member id -> the operator's name of that member (None: not a member we know).
NameOf = Callable[[str], "str | None"]


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


def static_name_of(member_id: str) -> str | None:
    """Member id -> name for a static cluster, where every member id is its name.

    (The runtime's membership mapping replaces it where members have other ids.)
    """
    return member_id


# ---------------------------------------------------------------- names


def certificate_names(cert: Mapping[str, Any] | None) -> frozenset[str]:
    """The identities a verified certificate (``getpeercert()``) names."""
    if not cert:
        return frozenset()
    sans = cert.get("subjectAltName", ())
    names = {str(value) for kind, value in sans if kind in ("DNS", "URI")}
    if names:
        return frozenset(names)
    common = [
        str(value)
        for rdn in cert.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
    return frozenset(common)


@dataclass(frozen=True, slots=True)
class TlsPeer:
    """The verified certificate of the other end of a TLS connection."""

    names: frozenset[str]
    # The verified chain runs through a certificate of the cluster CA bundle.
    cluster_ca: bool

    def describe(self) -> str:
        names = ", ".join(sorted(self.names)) or "nothing"
        return f"a certificate naming {names}" + ("" if self.cluster_ca else " (not cluster CA)")


def identity_error(peer: TlsPeer | None, member_id: str, name_of: NameOf) -> str | None:
    """Why the holder of `peer`'s certificate may not speak as member `member_id`; None if
    it may.

    The single place that binds a TLS identity to a Raft member: the peer-stream
    handshake and the course routes both call it. Safety: a member's messages
    carry its member id as `src`, and the core trusts `src` (votes, acks,
    leadership); so only a certificate issued by the cluster CA *for that
    member's name* may open a stream or send a course request as it. Every
    later message on a stream must carry the same `src` (checked per message by
    the connection), so the binding covers the whole stream.
    """
    if peer is None:
        return "no certificate: this node requires peer TLS (mutual TLS with the cluster CA)"
    if not peer.cluster_ca:
        return f"{peer.describe()}: the certificate is not issued by the cluster CA"
    name = name_of(member_id)
    if name is None:
        return f"{member_id!r} is not a member this node knows"
    if name not in peer.names:
        shown = ", ".join(sorted(peer.names)) or "no name"
        return f"the certificate names {shown}, not {name!r} (member {member_id!r})"
    return None


# ---------------------------------------------------------------- files


def _describe_ssl_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def load_ca_bundle(path: Path, what: str) -> frozenset[bytes]:
    """The DER form of every certificate in a PEM bundle (TlsError if none or unreadable)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise TlsError(f"{what}: cannot read {path}: {_describe_ssl_error(exc)}") from None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    ders: set[bytes] = set()
    pos = 0
    while (start := text.find(begin, pos)) != -1:
        stop = text.find(end, start)
        if stop == -1:
            break
        try:
            ders.add(ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)]))
        except ValueError as exc:
            raise TlsError(f"{what}: {path} holds a malformed certificate: {exc}") from None
        pos = stop + len(end)
    if not ders:
        raise TlsError(f"{what}: {path} holds no PEM certificate")
    return frozenset(ders)


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"{what}: cannot use certificate {cert} with key {key}: {_describe_ssl_error(exc)}"
        ) from None


def _load_cas(ctx: ssl.SSLContext, cas: Iterable[tuple[Path, str]]) -> None:
    for path, what in cas:
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"{what}: cannot load CA {path}: {_describe_ssl_error(exc)}") from None


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# ---------------------------------------------------------------- contexts


def peer_client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """How a node dials its peers: presents its peer certificate, trusts only the cluster
    CA. The acceptor's *name* is checked after the handshake (`identity_error`), not its
    host name: a peer URL may well hold an IP address."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_cas(ctx, [(ca, "--peer-tls-ca")])
    _load_chain(ctx, cert, key, "--peer-tls-cert")
    return ctx


@dataclass(frozen=True)
class ServerTls:
    """What the listener needs to terminate TLS on the node's port."""

    context: ssl.SSLContext
    # The client API is HTTPS: plaintext HTTP is answered with a 400 and closed.
    https: bool
    # Peers must use TLS with a cluster-CA certificate: plaintext peer streams and
    # course requests without one are refused.
    peer_tls: bool
    # DER of every certificate in the cluster CA bundle (empty without peer TLS).
    cluster_cas: frozenset[bytes]
    # The server's trust store holds only the cluster CA: any verified chain is one.
    cluster_ca_only: bool
    # Every TLS connection must show a verified certificate: client certificates are
    # required (--tls-client-ca), or TLS is for peers only (no --tls-cert).
    client_cert_required: bool = False


def server_tls(
    *,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    peer_cert: Path | None,
    peer_key: Path | None,
    peer_ca: Path | None,
) -> ServerTls | None:
    """The node's TLS, from its configuration (None: no TLS at all).

    - client TLS (`cert`/`key`): the certificate shown to anyone but peers;
    - peer TLS (`peer_ca` with `peer_cert`/`peer_key`): the certificate shown to
      peers (chosen by :data:`PEER_SNI` when it differs), client certificates
      requested from everyone and verified against the cluster CA (and the
      client CA, when there is one);
    - `client_ca`: every connection must present a verified certificate.
    """
    client_chain = (cert, key) if cert is not None and key is not None else None
    peer_chain = (peer_cert, peer_key) if peer_cert is not None and peer_key is not None else None
    if peer_ca is None:
        peer_chain = None
    if client_chain is None and peer_chain is None:
        return None
    trust: list[tuple[Path, str]] = []
    if peer_chain is not None and peer_ca is not None:
        trust.append((peer_ca, "--peer-tls-ca"))
    if client_ca is not None:
        trust.append((client_ca, "--tls-client-ca"))
    # A certificate is asked for and verified when shown (a bad one fails the
    # handshake); whether one *must* be shown is enforced after the handshake
    # (`client_cert_required`), so that a client without one gets an answer that
    # says so instead of a TLS alert it may never read (TLS 1.3).
    verify = ssl.CERT_OPTIONAL

    def make(chain: tuple[Path, Path], what: str) -> ssl.SSLContext:
        ctx = _base(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(ctx, *chain, what)
        ctx.set_alpn_protocols(_ALPN)
        if trust:
            _load_cas(ctx, trust)
            ctx.verify_mode = verify
        return ctx

    if client_chain is not None:
        context = make(client_chain, "--tls-cert")
        if peer_chain is not None and peer_chain != client_chain:
            peer_context = make(peer_chain, "--peer-tls-cert")

            def choose(obj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
                # Only the certificate shown differs: both contexts trust and
                # verify alike, so switching cannot weaken verification.
                if server_name == PEER_SNI:
                    obj.context = peer_context

            context.sni_callback = choose
    else:
        assert peer_chain is not None  # one of the two, see above
        context = make(peer_chain, "--peer-tls-cert")
    cluster_cas = frozenset[bytes]()
    if peer_chain is not None and peer_ca is not None:
        cluster_cas = load_ca_bundle(peer_ca, "--peer-tls-ca")
    return ServerTls(
        context=context,
        https=client_chain is not None,
        peer_tls=peer_chain is not None,
        cluster_cas=cluster_cas,
        cluster_ca_only=client_ca is None,
        client_cert_required=client_ca is not None or client_chain is None,
    )


def _verified_chain(obj: Any) -> list[bytes] | None:
    """DER of the verified chain of an SSLObject (leaf first), or None if unavailable.

    Public from Python 3.13; the same method on `_sslobj` from 3.10.
    """
    for owner in (obj, getattr(obj, "_sslobj", None)):
        method = getattr(owner, "get_verified_chain", None)
        if method is not None:
            chain = method()
            return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain or ()]  # type: ignore[attr-defined]
    return None


def tls_peer_of(obj: Any, tls: ServerTls) -> TlsPeer | None:
    """The verified certificate of an accepted TLS connection (None: no certificate).

    `obj` is the connection's `ssl.SSLObject`. With a client CA besides the
    cluster CA, a verified chain proves only "one of the two": the chain itself
    says which (a certificate of the cluster CA bundle in it). If the chain
    cannot be read, the certificate does not count as the cluster CA's: fail
    closed.
    """
    cert = obj.getpeercert()
    if not cert:
        return None
    if not tls.peer_tls:
        cluster_ca = False
    elif tls.cluster_ca_only:
        cluster_ca = True
    else:
        chain = _verified_chain(obj)
        cluster_ca = chain is not None and any(der in tls.cluster_cas for der in chain[1:])
    return TlsPeer(certificate_names(cert), cluster_ca)


# ---------------------------------------------------------------- start-up check


def _memory_handshake(server: ssl.SSLObject, client: ssl.SSLObject,
                      wires: tuple[ssl.MemoryBIO, ...]) -> None:  # fmt: skip
    """Both ends of a handshake, in memory. The server verifies the client's
    certificate before its own handshake completes (TLS 1.2 and 1.3 alike), so a
    refusal from either end raises here."""
    s_in, s_out, c_in, c_out = wires
    done = [False, False]
    for _ in range(20):
        for i, obj in enumerate((client, server)):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done):
            return
    raise TlsError("the TLS handshake did not complete")


def check_peer_certificate(cert: Path, key: Path, ca: Path, name: str) -> None:
    """Refuse at start a peer certificate its peers would refuse: one that the cluster CA
    did not sign, that has expired, that cannot serve both ends of a connection, or that
    does not name this node. A TLS handshake with itself, in memory."""
    server_ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(server_ctx, cert, key, "--peer-tls-cert")
    _load_cas(server_ctx, [(ca, "--peer-tls-ca")])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = peer_client_context(cert, key, ca)
    wires = (ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO())
    server = server_ctx.wrap_bio(wires[0], wires[1], server_side=True)
    client = client_ctx.wrap_bio(wires[2], wires[3], server_hostname=PEER_SNI)
    try:
        _memory_handshake(server, client, wires)
    except ssl.SSLError as exc:
        raise TlsError(
            f"--peer-tls-cert {cert} is not accepted by the cluster CA {ca}: "
            f"{_describe_ssl_error(exc)}"
        ) from None
    names = certificate_names(server.getpeercert())
    if name not in names:
        shown = ", ".join(sorted(names)) or "no name"
        raise TlsError(
            f"--peer-tls-cert {cert} names {shown}, not this node ({name!r}): its peers would "
            "refuse it. Issue the node a certificate with its name as a subjectAltName DNS "
            "entry"
        )
