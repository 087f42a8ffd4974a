"""Client authentication: bearer tokens with roles, and the checks on secrets from config.

Rules (docs/security.md, docs/api.md "Authentication"):

* Client tokens are separate from the peer credential (`--cluster-token`): a
  client token is never accepted on `/raft/*`, and the cluster token grants
  nothing on the client routes unless it is also configured as a client token.
* Roles: ``read`` may use the read routes (GET /kv..., /debug); ``write`` may
  also write (PUT, POST, DELETE, /txn, CAS). `/status`, `/health`, `/ready` and
  `/openapi.json` stay open, so load balancers and monitors need no secret.
* With no client token configured, the client API is open (the default, as
  in the course).
* A request carries ``Authorization: Bearer <token>`` exactly once. No
  header, a malformed one, more than one, or an unknown token: 401 with
  ``WWW-Authenticate: Bearer``. A known token whose role is too weak: 403.
* Every comparison is constant-time (`hmac.compare_digest` on SHA-256
  digests, so the length of a configured token does not leak either), and all
  configured tokens are compared, whichever matches.
* Secrets from configuration are printable ASCII (``!`` to ``~``), 1 to
  `MAX_TOKEN_LEN` characters: they travel in HTTP headers, so anything else
  could not be sent (a non-Latin-1 token used to crash nodes at their first
  message) or could split a header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

from trioraft.errors import Forbidden, Unauthorized

__all__ = ["MAX_TOKEN_LEN", "ROLES", "ClientAuth", "check_secret"]

ROLES = ("read", "write")
MAX_TOKEN_LEN = 512
_SECRET_RE = re.compile(rf"[!-~]{{1,{MAX_TOKEN_LEN}}}")


def check_secret(value: str, what: str) -> str:
    """`value` if it is a usable token, else ValueError naming `what`."""
    if not _SECRET_RE.fullmatch(value):
        raise ValueError(
            f"{what}: a token must be 1 to {MAX_TOKEN_LEN} printable ASCII characters "
            "('!' to '~', no spaces)"
        )
    return value


def _digest(token: str | bytes) -> bytes:
    raw = token.encode("latin-1") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


class ClientAuth:
    """The configured client tokens; `check` enforces them on one request."""

    def __init__(self, tokens: Iterable[tuple[str, str]] = ()) -> None:
        self._tokens: list[tuple[bytes, str]] = []
        for role, token in tokens:
            if role not in ROLES:
                raise ValueError(f"unknown client role {role!r} (use {' or '.join(ROLES)})")
            self._tokens.append((_digest(check_secret(token, "client token")), role))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def role_of(self, authorization: Sequence[bytes]) -> str:
        """The role of the bearer token in the Authorization header values given.

        Raises `Unauthorized` unless there is exactly one header holding a
        known bearer token.
        """
        if len(authorization) != 1:
            raise Unauthorized(
                "this node requires a client token: send exactly one "
                "'Authorization: Bearer <token>' header"
            )
        scheme, _, token = authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        given = _digest(token.strip())
        role: str | None = None
        for digest, candidate in self._tokens:  # no early exit: constant time
            if hmac.compare_digest(given, digest) and role is None:
                role = candidate
        if role is None:
            raise Unauthorized("unknown client token")
        return role

    def check(self, needs_write: bool, authorization: Sequence[bytes]) -> None:
        """Raise Unauthorized / Forbidden unless the request may proceed."""
        if not self._tokens:
            return
        role = self.role_of(authorization)
        if needs_write and role != "write":
            raise Forbidden("this token is read-only; writes need a token with the write role")
