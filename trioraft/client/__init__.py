"""Python clients for trioraft: :class:`Client` (blocking) and :class:`AsyncClient`
(Trio or asyncio).

Both have the same methods and behaviour, because both run the same sans-IO request
logic (``_core.Core``): a generator that yields "send this request" and "sleep this
long" actions and receives responses; each client only supplies the I/O.

Behaviour
---------
* **Keys.** Any non-empty string the server accepts: each key travels as one
  percent-encoded path segment (``/`` as ``%2F``, ``%`` as ``%25``, and the
  segments ``.`` and ``..`` as ``%2E``), so keys beginning with ``/`` and the keys
  ``.`` and ``..`` work like any other.
* **Leader discovery.** Every response carries ``X-Raft-Leader: <id>``; the client
  resolves the id to a URL (an endpoint that reported that id in ``/status``, else the
  URL in the ``/status`` members map) and sends writes and linearizable reads there.
  Any node forwards to the leader anyway, so a wrong guess costs a hop, not an error.
* **Retries.** Connection errors, timeouts, ``503`` (no leader / no quorum), ``502`` and
  ``504`` (unknown outcome) are retried with exponential backoff and jitter, trying the
  other endpoints first, until the per-call deadline (``timeout``) passes. When every
  endpoint refuses connections for ``unreachable_timeout`` (1 s) the call fails at
  once with :class:`Unavailable`: a cluster that is down does not cost ``timeout``.
* **Exactly once.** Each client has a random id; every write gets
  ``Idempotency-Key: <client-id>:<seq>`` and all retries of that write reuse it, so the
  cluster applies it at most once even when an attempt's outcome was unknown.
* **Errors.** ``get`` of an absent key returns ``None`` (only on the store's own
  ``404 not_found`` naming that key: any other 404 raises); a failed CAS returns
  ``False``. Everything else raises a :class:`TrioraftError` subclass:
  :class:`BadRequest` (400), :class:`TooLarge` (413), :class:`Unavailable` (no answer
  or no leader before the deadline: the operation did not happen),
  :class:`UnknownOutcome` (a write might have been applied: retrying it with a fresh
  key could apply it twice), :class:`Unauthorized` (401: no or an unknown client
  token), :class:`Forbidden` (403: the token's role is too weak), :class:`TlsError`
  (a failed TLS handshake: untrusted, expired or misnamed node certificate, or a
  client certificate the node refused or needs). None of these took effect.
* **Credentials.** ``cacert`` (a PEM CA bundle to trust instead of the system's),
  ``cert``/``key`` (a client certificate, for nodes started with
  ``--tls-client-ca``), ``token`` (sent as ``Authorization: Bearer``). With
  ``cacert`` or ``cert``, an endpoint given as ``host:port`` means
  ``https://host:port``.
"""

from ._async import AsyncClient
from ._core import DEFAULT_ENDPOINTS, MAX_PAGE, key_path, normalize_endpoints
from ._errors import (
    BadRequest,
    EndpointStatus,
    Forbidden,
    RangePage,
    TlsError,
    TooLarge,
    TrioraftError,
    TxnResult,
    Unauthorized,
    Unavailable,
    UnknownOutcome,
)
from ._sync import Client
from ._txn import AsyncTxn, Txn, TxnOp

__all__ = [
    "DEFAULT_ENDPOINTS",
    "MAX_PAGE",
    "AsyncClient",
    "AsyncTxn",
    "BadRequest",
    "Client",
    "EndpointStatus",
    "Forbidden",
    "RangePage",
    "TlsError",
    "TooLarge",
    "TrioraftError",
    "Txn",
    "TxnOp",
    "TxnResult",
    "Unauthorized",
    "Unavailable",
    "UnknownOutcome",
    "key_path",
    "normalize_endpoints",
]
