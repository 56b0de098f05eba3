"""Streaming an answer while it is generated: reasoning (quotes, a chain of thought) as it comes,
the answer itself either live (plain and RAFT prompts) or once it has been checked (grounded: the
answer is a line, and a rejected one must never reach the user)."""

from __future__ import annotations


class AnswerStream:
    """Splits a reply at `tag` (e.g. "Answer:"): before it is reasoning, after it the answer.
    A tag split across pieces is held back until it is clear whether it is one."""

    def __init__(self, *, on_text=None, on_event=None, tag: str | None = None, hold_content: bool = False):
        self.on_text, self.on_event, self.tag, self.hold_content = on_text, on_event, tag, hold_content
        self.buffer, self.answering, self.started = "", tag is None, False
        self.streamed_content = False

    @property
    def active(self) -> bool:
        return bool(self.on_text or self.on_event)

    def emit(self, piece: str, kind: str) -> None:
        if not piece:
            return
        if kind == "content":
            self.streamed_content = True
            if self.on_text:
                self.on_text(piece)
        if self.on_event:
            self.on_event(piece, kind)

    def feed(self, piece: str) -> None:
        if self.answering:
            return self._content(piece)
        self.buffer += piece
        at = self.buffer.find(self.tag)
        if at >= 0:
            self.emit(self.buffer[:at], "reasoning")
            rest, self.buffer, self.answering = self.buffer[at + len(self.tag):], "", True
            return self._content(rest)
        keep = next((n for n in range(min(len(self.tag) - 1, len(self.buffer)), 0, -1)
                     if self.tag.startswith(self.buffer[-n:])), 0)
        ready = self.buffer[: len(self.buffer) - keep]
        if ready:
            self.emit(ready, "reasoning")
            self.buffer = self.buffer[len(ready):]

    def _content(self, piece: str) -> None:
        if self.hold_content:
            return
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        self.emit(piece, "content")

    def final(self, answer: str | None) -> None:
        """At the end: what is held back is reasoning; the answer is sent when none was streamed."""
        if self.buffer and not self.answering:
            self.emit(self.buffer, "reasoning")
            self.buffer = ""
        if answer and not self.streamed_content:
            self.emit(answer, "content")
