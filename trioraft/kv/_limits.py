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

Memory bound of the exactly-once (dedup) table
----------------------------------------------
For each of at most `DEDUP_CLIENTS` clients the table keeps the results of the
`DEDUP_WINDOW` highest sequence numbers it has applied. The worst case is
therefore

    DEDUP_CLIENTS x DEDUP_WINDOW = 4,096 x 64 = 262,144 results.

A Put's result is stored without its value (a retry carries the value again),
so it costs its key plus roughly 200 bytes of Python object overhead; a failed
Cas keeps the current value it saw and a Txn its Get values. For small
commands the worst case is therefore in the order of 50-100 MB; a realistic
cluster with hundreds of active clients needs a few MB. When the table is full
the client with the oldest activity (lowest log index) is forgotten entirely;
its later retries of old requests would then be applied again, so a client
must not stay silent across more than `DEDUP_CLIENTS` other clients' activity
while it still intends to retry.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEDUP_CLIENTS",
    "DEDUP_WINDOW",
    "MAX_KEY_BYTES",
    "MAX_REQUEST_ID_BYTES",
    "MAX_TXN_BYTES",
    "MAX_TXN_OPS",
    "MAX_VALUE_BYTES",
]

MAX_KEY_BYTES: Final = 1024  # UTF-8 bytes of one key
MAX_VALUE_BYTES: Final = 1024 * 1024  # UTF-8 bytes of one value (1 MiB)
MAX_TXN_OPS: Final = 1000  # compares + success ops + failure ops of one Txn
MAX_TXN_BYTES: Final = 4 * 1024 * 1024  # sum of key and value bytes in one Txn
MAX_REQUEST_ID_BYTES: Final = 256  # UTF-8 bytes of a "client:seq" request id

DEDUP_WINDOW: Final = 64  # results remembered per client (highest sequence numbers)
DEDUP_CLIENTS: Final = 4096  # clients remembered; least recently active evicted first
