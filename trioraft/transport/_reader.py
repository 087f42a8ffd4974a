"""Reading frames off a byte stream, with every size bounded before it is buffered."""

from __future__ import annotations

import math

import trio

from trioraft.transport._frames import HEADER, PREAMBLE, FrameError, FrameType, frame_type

__all__ = ["FrameReader"]

RECEIVE_SIZE = 1 << 16


class FrameReader:
    """Frames from `stream`: at most `max_frame` bytes of payload each.

    A length field above the limit closes the stream before any of the
    payload is read, so a hostile header allocates nothing. The buffer holds
    at most one frame plus one receive's worth of the next.
    """

    def __init__(
        self, stream: trio.abc.ReceiveStream, max_frame: int, receive_timeout: float = math.inf
    ) -> None:
        self._stream = stream
        self.max_frame = max_frame
        # No byte at all for this long raises trio.TooSlowError: the link is dead.
        self.receive_timeout = receive_timeout
        self._buf = bytearray()
        self._pos = 0
        self.bytes_received = 0

    async def _fill(self) -> bool:
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        with trio.fail_after(self.receive_timeout):
            data = await self._stream.receive_some(RECEIVE_SIZE)
        if not data:
            return False
        self.bytes_received += len(data)
        self._buf += data
        return True

    async def preamble(self) -> None:
        """Consume the connection preamble; FrameError if the bytes are anything else."""
        n = len(PREAMBLE)
        while len(self._buf) - self._pos < n:
            if self._buf[self._pos :] != PREAMBLE[: len(self._buf) - self._pos]:
                break
            if not await self._fill():
                raise FrameError("the connection closed during the preamble")
        if bytes(self._buf[self._pos : self._pos + n]) != PREAMBLE:
            raise FrameError("not a trioraft peer stream (bad preamble)")
        self._pos += n

    async def next(self, max_frame: int | None = None) -> tuple[FrameType, bytes] | None:
        """The next frame's type and payload; None at a clean end of stream.

        `max_frame` overrides the limit for this frame (the handshake's frames
        are small). Raises FrameError on a bad header or an end mid-frame.
        """
        limit = self.max_frame if max_frame is None else max_frame
        hsize = HEADER.size
        while len(self._buf) - self._pos < hsize:
            if not await self._fill():
                if len(self._buf) == self._pos:
                    return None
                raise FrameError("the stream ended inside a frame header")
        length, code = HEADER.unpack_from(self._buf, self._pos)
        if length < 1 or length - 1 > limit:
            raise FrameError(f"frame of {length - 1} bytes (limit {limit})")
        ftype = frame_type(code)
        end = self._pos + 4 + length
        while len(self._buf) < end:
            if not await self._fill():
                raise FrameError("the stream ended inside a frame")
            end = self._pos + 4 + length
        payload = bytes(self._buf[self._pos + hsize : end])
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return ftype, payload
