"""Small helpers for node-level tests: commands in, results out."""

from __future__ import annotations

from typing import Any

from trioraft.kv import Cas, Delete, Put, encode_command
from trioraft.node import RaftNode


async def put(node: RaftNode, key: str, value: str, request_id: str | None = None) -> Any:
    """Propose a Put through `node` and return its result (a PutResult)."""
    [result] = await node.propose([encode_command(Put(key, value, request_id))])
    return result


async def delete(node: RaftNode, key: str) -> Any:
    [result] = await node.propose([encode_command(Delete(key))])
    return result


async def cas(node: RaftNode, key: str, expected: str | None, value: str | None) -> Any:
    [result] = await node.propose([encode_command(Cas(key, expected, value))])
    return result


async def linearizable_get(node: RaftNode, key: str) -> str | None:
    """A ReadIndex read served from `node`'s own state machine."""
    await node.read_barrier()
    return node.kv.get(key)
