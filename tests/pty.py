"""A program in a pseudo-terminal, as a person at a terminal runs it: pexpect, driven from trio tests.

pexpect blocks, so each wait runs in a worker thread; the screen's text is matched with the terminal's
escape sequences removed (prompt_toolkit redraws the prompt with them).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import pexpect
import pyte
import trio

TIMEOUT = 15
# CSI and OSC sequences, and the lone escapes of keypad and charset modes.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>()][0-9A-Za-z]?")


def plain(text: str) -> str:
    return _ESCAPES.sub("", text).replace("\r", "")


class _Screen(pyte.Screen):
    """A screen that keeps its answers to the program (cursor position reports) to be sent back."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self.answers: list[str] = []

    def write_process_input(self, data: str) -> None:
        self.answers.append(data)


class Pty:
    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
                 columns: int = 100, rows: int = 30) -> None:
        environment = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.child = pexpect.spawn(argv[0], argv[1:], cwd=str(cwd), env=environment, encoding="utf-8",
                                   dimensions=(rows, columns), timeout=TIMEOUT)
        self.seen = ""  # everything written so far, without escapes
        self._screen = _Screen(columns, rows)  # what a person sees now
        self._stream = pyte.Stream(self._screen)

    def _take(self, chunk: str) -> None:
        self.seen += plain(chunk)
        self._stream.feed(chunk)
        if self._screen.answers:  # the terminal answers what the program asks (where the cursor is)
            self.child.send("".join(self._screen.answers))
            self._screen.answers.clear()

    def screen(self) -> list[str]:
        """The terminal's rows as a person sees them now, trailing blanks removed."""
        return [row.rstrip() for row in self._screen.display]

    @classmethod
    def utuvox(cls, *args: str, cwd: Path, env: dict[str, str] | None = None, **kw: int) -> Pty:
        return cls([sys.executable, "-m", "utuvox", *args], cwd=cwd, env=env, **kw)

    def _pump_until(self, predicate: str | re.Pattern[str], start: int) -> str:
        pattern = re.compile(re.escape(predicate)) if isinstance(predicate, str) else predicate
        while True:
            match = pattern.search(self.seen, start)
            if match:
                return match.group(0)
            try:
                chunk = self.child.read_nonblocking(65536, timeout=TIMEOUT)
            except pexpect.EOF:
                raise AssertionError(f"ended before {pattern.pattern!r}; screen:\n{self.seen[-3000:]}") from None
            except pexpect.TIMEOUT:
                raise AssertionError(f"no {pattern.pattern!r} in {TIMEOUT} s; screen:\n{self.seen[-3000:]}") from None
            self._take(chunk)

    async def expect(self, predicate: str | re.Pattern[str], *, since: int | None = None) -> str:
        """Wait until the screen shows ``predicate`` (text or regex) after offset ``since`` (default: the
        mark); returns what matched."""
        start = self.mark if since is None else since
        return await trio.to_thread.run_sync(self._pump_until, predicate, start)

    mark = 0

    def set_mark(self) -> int:
        """From now on, ``expect`` looks only at what is shown after this point."""
        self.mark = len(self.seen)
        return self.mark

    async def line(self, text: str) -> None:
        """Type ``text`` and Enter."""
        self.set_mark()
        await trio.to_thread.run_sync(self.child.send, text + "\r")

    async def send(self, data: str) -> None:
        self.set_mark()
        await trio.to_thread.run_sync(self.child.send, data)

    async def settle(self, seconds: float = 0.3) -> str:
        """Read what comes within ``seconds`` (for asserting what did NOT appear)."""
        def read() -> None:
            while True:
                try:
                    self._take(self.child.read_nonblocking(65536, timeout=seconds))
                except (pexpect.TIMEOUT, pexpect.EOF):
                    return
        await trio.to_thread.run_sync(read)
        return self.seen[self.mark:]

    async def wait(self) -> int:
        """Wait for the program to end; its exit status."""
        def finish() -> int:
            with contextlib.suppress(pexpect.EOF):
                self._take(self.child.read())
            self.child.wait()
            self.child.close()
            return self.child.exitstatus if self.child.exitstatus is not None else -(self.child.signalstatus or 0)
        return await trio.to_thread.run_sync(finish)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
