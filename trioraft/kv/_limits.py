"""Every limit of the key-value state machine, in one place.

These numbers are part of the replicated protocol, not local tuning: `apply`
checks them, so every replica must use the same values or the replicas could
disagree about whether an entry is valid. Change them only with a coordinated
upgrade of the whole cluster.

Sizes
-----
Keys are non-empty strings of at most `MAX_KEY_BYTES` UTF-8 bytes, values at
most `MAX_VALUE_BYTES`. A transaction holds at most `MAX_TXN_OPS` compares and
operations in total, carrying at most `MAX_TXN_BYTES` of keys and values, so a
single log entry stays a few MiB at worst.

A transaction's *result* is bounded too, because reads inside it could
otherwise multiply one stored value a thousand times: the values its `get`
ops return (and the `current` values of its failed `cas` ops) may total at
most `MAX_TXN_RESULT_BYTES`. The check runs in `apply`, so every replica
decides alike: a transaction over it changes nothing and answers 413
(`TooLargeResult`). It has at most `MAX_TXN_OPS` results, one per op.

Request ids (Idempotency-Key)
-----------------------------
``client:seq``: the client part is 1 or more printable ASCII characters
(``!`` to ``~``), seq a decimal integer in ``[0, MAX_SEQ]`` written in its one
canonical form (no sign, no leading zeros), the whole at most
`MAX_REQUEST_ID_BYTES`. So ``z:0001`` is refused rather than taken for
``z:1``, and no sequence number can overflow a 64-bit field anywhere.

Memory bound of the exactly-once (dedup) table
----------------------------------------------
For each of at most `DEDUP_CLIENTS` clients the table keeps a record of each
of the `DEDUP_WINDOW` highest sequence numbers it has applied, so at most

    DEDUP_CLIENTS x DEDUP_WINDOW = 4,096 x 64 = 262,144 records.

A record never holds a value: it is a 16-byte fingerprint of the whole
command (so a key reused for a different request is refused, for every kind of
command) followed by a compact summary of the command's effect (log index,
which deletes found their key, which CAS held, how many keys a delete_prefix
removed). A retry's answer is rebuilt from the retried command and that
summary. Read results (the values of `get` ops, the `current` of a failed
`cas`) are never stored: in a replayed answer they are null and the answer
says ``"replayed": true`` (an answer without reads is replayed exactly).

Each record is accounted as its length plus `DEDUP_RECORD_OVERHEAD` bytes and
each client as its id's length plus `DEDUP_CLIENT_OVERHEAD`; the table never
holds more than `DEDUP_MAX_BYTES` accounted bytes (a 32-byte record of a plain
write costs 192). The overheads are measured upper bounds of the Python
objects involved (tests/kv/test_kv_dedup.py checks them with tracemalloc), so
the table's resident memory is at most about `DEDUP_MAX_BYTES` = 48 MiB, and
its share of a snapshot is smaller still. When either bound is reached, the
client with the oldest activity (lowest log index) is forgotten entirely; its
later retries of old requests would then be applied again, so a client must
not stay silent across that much other clients' activity while it still
intends to retry.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEDUP_CLIENTS",
    "DEDUP_CLIENT_OVERHEAD",
    "DEDUP_MAX_BYTES",
    "DEDUP_RECORD_OVERHEAD",
    "DEDUP_WINDOW",
    "MAX_INDEX",
    "MAX_KEY_BYTES",
    "MAX_REQUEST_ID_BYTES",
    "MAX_SEQ",
    "MAX_TXN_BYTES",
    "MAX_TXN_OPS",
    "MAX_TXN_RESULT_BYTES",
    "MAX_VALUE_BYTES",
]

MAX_KEY_BYTES: Final = 1024  # UTF-8 bytes of one key
MAX_VALUE_BYTES: Final = 1024 * 1024  # UTF-8 bytes of one value (1 MiB)
MAX_TXN_OPS: Final = 1000  # compares + success ops + failure ops of one Txn
MAX_TXN_BYTES: Final = 4 * 1024 * 1024  # sum of key and value bytes in one Txn
MAX_TXN_RESULT_BYTES: Final = 4 * 1024 * 1024  # sum of value bytes a Txn's reads return
MAX_REQUEST_ID_BYTES: Final = 256  # bytes of a "client:seq" request id (ASCII)
MAX_SEQ: Final = 2**63 - 1  # largest sequence number of a request id
MAX_INDEX: Final = 2**62 - 1  # largest log index a snapshot may carry (PLAN: [0, 2**62))

DEDUP_WINDOW: Final = 64  # records kept per client (highest sequence numbers)
DEDUP_CLIENTS: Final = 4096  # clients remembered; least recently active evicted first
DEDUP_MAX_BYTES: Final = 48 * 1024 * 1024  # accounted bytes of the whole table
DEDUP_RECORD_OVERHEAD: Final = 160  # accounted per record, on top of its length
DEDUP_CLIENT_OVERHEAD: Final = 400  # accounted per client, on top of its id's length
