"""Errors raised by the key-value package. Both are `ValueError`s."""

from __future__ import annotations

__all__ = ["InvalidCommand", "InvalidSnapshot", "TooLarge"]


class InvalidCommand(ValueError):
    """A command is malformed: undecodable bytes, an empty key, a bad request id, ...

    The message is a human sentence suitable for an HTTP 400 body.
    """


class TooLarge(InvalidCommand):
    """A key, value, request id or transaction exceeds its limit (HTTP 413).

    A subclass of `InvalidCommand`, so code that only cares about "valid or
    not" needs a single `except`; catch `TooLarge` first to tell them apart.
    """


class InvalidSnapshot(ValueError):
    """`KVStateMachine.restore` was given bytes that are not a valid snapshot."""
