"""Client credentials: the CA bundle, a client certificate, a bearer token; and what a
failed TLS handshake means, in words.

A TLS failure is a configuration problem that a retry does not fix, so a call
to a configured endpoint fails at once with :class:`TlsError` (nothing was
applied: the node never saw a request it could read). A learned leader URL
that fails TLS is only dropped, like an unreachable one: the endpoints
forward.
"""

from __future__ import annotations

import os
import re
import ssl

import httpx

from ._errors import TlsError

__all__ = ["auth_headers", "client_ssl_context", "tls_failure"]

_TOKEN_RE = re.compile(r"[!-~]{1,512}")
PathLike = str | os.PathLike[str]


def client_ssl_context(
    cacert: PathLike | None, cert: PathLike | None, key: PathLike | None
) -> ssl.SSLContext | None:
    """The context for https:// endpoints: the system's CAs, or only `cacert`; presenting
    `cert` (with `key`, or a key inside `cert`). None when nothing is given (httpx's
    default verification). ValueError naming the file that cannot be used."""
    if cacert is None and cert is None:
        if key is not None:
            raise ValueError("a client key (--key) needs its certificate (--cert)")
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(cacert) if cacert is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA bundle {cacert}: {_reason(exc)}") from None
    if cert is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot use the client certificate {cert}"
                + (f" with key {key}" if key is not None else "")
                + f": {_reason(exc)}"
            ) from None
    elif key is not None:
        raise ValueError("a client key (--key) needs its certificate (--cert)")
    return ctx


def auth_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer TOKEN`` for every request (none without a token)."""
    if token is None:
        return {}
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError("a client token is 1 to 512 printable ASCII characters, no spaces")
    return {"Authorization": f"Bearer {token}"}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


# What the node said (an alert during or right after the handshake), by OpenSSL reason.
_SERVER_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the node requires a client certificate: give one "
    "(--cert/--key, env TRIORAFT_CERT/TRIORAFT_KEY)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the node refused the TLS handshake (a client "
    "certificate required but none given? --cert/--key)",
    "TLSV1_ALERT_UNKNOWN_CA": "the node does not trust this client's certificate (unknown "
    "CA): use a certificate from the CA the node requires (its --tls-client-ca)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the node refused this client's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the node refused this client's certificate: it has "
    "expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the node refused this client's certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the node refused this client's certificate",
    "WRONG_VERSION_NUMBER": "the node does not speak TLS on this port: use an http:// URL",
    "RECORD_LAYER_FAILURE": "the node does not speak TLS on this port: use an http:// URL",
}


def tls_failure(url: str, exc: httpx.TransportError) -> TlsError | None:
    """A clear :class:`TlsError` if `exc` is a TLS failure, else None."""
    cause = _ssl_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = cause.verify_message or cause.reason or str(cause)
        if cause.verify_code in (18, 19, 20, 21):  # self-signed / unknown issuer
            hint = ("it is not signed by a CA this client trusts: pass the cluster's CA "
                    "(--cacert, env TRIORAFT_CACERT)")  # fmt: skip
        elif cause.verify_code == 10:
            hint = "it has expired (renew the node's certificate)"
        elif "mismatch" in str(why).lower() or cause.verify_code == 62:
            hint = "it is not issued for this host name: use a URL with a name it holds"
        else:
            hint = "it failed verification"
        return TlsError(f"{url}: the node's TLS certificate was refused ({why}): {hint}")
    reason = cause.reason or ""
    if reason in _SERVER_REFUSED:
        return TlsError(f"{url}: {_SERVER_REFUSED[reason]} ({reason.lower()})")
    return TlsError(f"{url}: TLS failed: {reason.lower() or cause}")
