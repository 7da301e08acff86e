"""`OutputCapture`: what a guest prints during one call, kept within a limit.

The guest flushes its print buffer in 4 KiB records (with a result, with a host call, or
when full), so a UTF-8 character can be cut between two records: the text is decoded
incrementally, and a character cut by a flush survives. Keeping it is linear in its size
(parts joined once, when asked for). At most `limit` bytes are kept per call; past it the
text is cut at the limit (a character the cut splits is dropped, not replaced), the rest
is dropped and `truncated` is set. Each kept piece also goes to the `output` callback.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class OutputCapture:
    __slots__ = ("limit", "callback", "truncated", "size", "used", "_parts", "_text", "_decoder")

    def __init__(self, limit: int, callback: Callable[[str], None] | None) -> None:
        self.limit = limit
        self.callback = callback
        self.truncated = False
        self.size = 0  # bytes kept in this call
        self.used = False  # anything printed (or cut) since the last clear
        self._parts: list[str] = []
        self._text: str | None = ""
        # Made on the first output: most calls print nothing (~2 us of every spawn).
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = "".join(self._parts)
            self._parts = [self._text]
        return self._text

    def clear(self) -> None:
        """Starts a new call."""
        self._parts = []
        self.size = 0
        self._text = ""
        if self._decoder is not None:
            self._decoder.reset()
        self.truncated = False
        self.used = False

    def add(self, data: bytes, *, final: bool = False) -> None:
        """Keeps `data` (UTF-8 bytes the guest printed); `final` at the end of a call
        (an incomplete character left then becomes U+FFFD)."""
        if self.truncated:
            return
        self.used = True
        room = self.limit - self.size
        if len(data) > room:
            data = data[:room]
            self.truncated = True
            final = False
        self.size += len(data)
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = _utf8_decoder(errors="replace")
        text = decoder.decode(data, final)
        if text:
            self._parts.append(text)
            self._text = None
            if self.callback is not None:
                self.callback(text)
