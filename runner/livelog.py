"""A run's stdout, stderr and log lines on their way to the store while it runs.

Each run buffers what it produced; its ``Sink`` (the recorder) is told when there is something
to write and takes it at its next flush, or at once when one stream has ``FLUSH_BYTES``
buffered. Every row is masked before it leaves the buffer, and a secret cut in two by a chunk
boundary is held back until the rest of it arrives.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import threading
import time
from typing import Protocol

from runner.masking import Masker
from runner.records import LogChunk

FLUSH_BYTES = 64 * 1024
"""Output buffered by one stream of one run that is moved to the batch without waiting; also
how long a line without its end must grow before a part of it is written."""


class Sink(Protocol):
    """Who writes a ``LiveLog``'s rows: told when there are some, and when they cannot wait."""

    def mark_dirty(self, live: LiveLog) -> None: ...

    def flush_now(self, live: LiveLog) -> None: ...


class _Output:
    """One output stream of a run on its way to the store: cut at line ends, capped, masked."""

    def __init__(self, stream: str, cap: int) -> None:
        self.stream = stream
        self.cap = cap
        self.buffer = bytearray()
        self.first_at = 0.0  # when the oldest byte in ``buffer`` arrived
        self.last_at = 0.0
        self.accepted = 0
        self.capped = False  # more than ``cap`` bytes arrived: the rest is not streamed
        self.told = False  # the row that says so is written
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, data: bytes, now: float) -> None:
        if self.capped:
            return
        room = self.cap - self.accepted
        if len(data) > room:
            data = data[:room]
            self.capped = True
        if not self.buffer:
            self.first_at = now
        self.last_at = now
        self.buffer += data
        self.accepted += len(data)

    def take(self, masker: Masker, secrets: list[bytes], run_id: str, *, final: bool) -> list[LogChunk]:
        """Rows for what can be written now: whole lines; a line without its end only when it
        is long, at the cap, or at the end; never the start of a secret without the rest."""
        ending = final or self.capped
        buffer = self.buffer
        if ending:
            cut = len(buffer)
        else:
            cut = buffer.rfind(b"\n") + 1
            if not cut and len(buffer) >= FLUSH_BYTES:
                cut = len(buffer)
        if secrets and not final:
            cut = _before_secret_start(buffer, cut, secrets)
        rows: list[LogChunk] = []
        if cut or ending:  # at the end, also the start of a character a long line was cut in
            chunk = bytes(buffer[:cut])
            text = masker.text(self.decoder.decode(chunk, final=ending))
            if text:
                rows.append(LogChunk(run_id, self.first_at, self.stream, "", text))
        if ending:
            # What is left at the cap is the start of a secret: never written (the record has it).
            buffer.clear()
        else:
            del buffer[:cut]
            self.first_at = self.last_at
        if self.capped and not self.told:
            self.told = True
            message = (
                f"[runner: {self.stream} beyond {self.cap} bytes is not streamed; "
                "the end is in the run's record]\n"
            )
            rows.append(LogChunk(run_id, self.last_at, self.stream, "warning", message))
        return rows


def _before_secret_start(buffer: bytearray, cut: int, secrets: list[bytes]) -> int:
    """``cut`` moved back so that no secret starts before it and ends after it."""
    moved = True
    while moved and cut:
        moved = False
        for secret in secrets:
            for size in range(min(len(secret) - 1, cut), 0, -1):
                if buffer[cut - size : cut] == secret[:size]:
                    cut -= size
                    moved = True
                    break
    return cut


class LiveLog:
    """One run's stdout, stderr and ``ctx.logger`` lines, on their way to the store.

    Output chunks come in on the event loop (``output``), log lines from any thread (``log``);
    the recorder's flusher ``take``s the rows to write, and ``close`` returns the last ones,
    for the run's final record. Every row is masked with the run's ``masker``; output rows have
    level ``""``. Each output stream is streamed up to ``output_cap`` bytes, like the tail the
    record keeps, and one row (level ``warning``) says where it stopped.
    """

    # Made for every python run, and most write nothing: ~14 k instructions each, made and
    # closed, before slots and the secrets' bytes made only for output.
    __slots__ = (
        "_closed", "_dirty", "_lines", "_lock", "_loop", "_loop_thread", "_masker", "_output_cap", "_outputs",
        "_secrets", "_sink", "run_id",
    )

    def __init__(self, sink: Sink, run_id: str, masker: Masker, output_cap: int) -> None:
        self._sink = sink
        self.run_id = run_id
        self._masker = masker
        self._secrets: list[bytes] | None = None  # the masker's, as bytes: made for the first output taken
        self._output_cap = output_cap
        self._outputs: dict[int, _Output] = {}
        self._lines: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._dirty = False
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def output(self, fd: int, data: bytes) -> None:
        """A chunk of the run's stdout (fd 1) or stderr (fd 2); on the event loop."""
        out = self._outputs.get(fd)
        if out is None:
            out = self._outputs[fd] = _Output("stdout" if fd == 1 else "stderr", self._output_cap)
        if self._closed or out.told:
            return
        out.add(data, time.time())
        if len(out.buffer) >= FLUSH_BYTES or (out.capped and not out.told):
            self._sink.flush_now(self)
        elif not self._dirty:
            self._dirty = True
            self._sink.mark_dirty(self)

    def log(self, at: float, level: str, message: str) -> None:
        """A line the task logged; from the event loop or a worker thread."""
        with self._lock:
            if self._closed:
                return
            self._lines.append((at, level, message))
            if self._dirty:
                return
            self._dirty = True
        if threading.get_ident() == self._loop_thread:
            self._sink.mark_dirty(self)
        else:
            # RuntimeError: the loop is closed, an abandoned thread outlived the runner.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._sink.mark_dirty, self)

    def take(self) -> list[LogChunk]:
        """The rows ready to be written; on the event loop."""
        return self._take(final=False)

    def close(self) -> list[LogChunk]:
        """Everything not written yet; later output and lines are dropped."""
        rows = self._take(final=True)
        self._closed = True
        return rows

    def close_quietly(self) -> None:
        """Take nothing more, and drop what is buffered."""
        with self._lock:
            self._closed = True

    def _take(self, *, final: bool) -> list[LogChunk]:
        if self._closed:
            return []
        with self._lock:
            lines, self._lines = self._lines, []
            self._dirty = False
            if final:
                self._closed = True
        rows: list[LogChunk] = []
        if lines:
            text = self._masker.text if self._masker else str
            rows = [LogChunk(self.run_id, at, "log", level, text(message)) for at, level, message in lines]
        for out in self._outputs.values():
            if final or out.buffer or (out.capped and not out.told):
                if self._secrets is None:
                    self._secrets = [secret.encode() for secret in self._masker.secrets]
                taken = out.take(self._masker, self._secrets, self.run_id, final=final)
                if taken:
                    # Streams interleave: ids should follow the order things happened in.
                    rows = sorted(rows + taken, key=lambda row: row.at) if rows else taken
        return rows
