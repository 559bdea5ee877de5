"""``utuvox client``: the terminal client. A prompt_toolkit line editor in front of :class:`Shell`.

The prompt (``(bob@general)>``) runs in a worker thread; trio keeps the connection in the main thread.
Incoming lines go through prompt_toolkit's ``patch_stdout``, which prints them above the line being
typed, never into it. Up/Down recall earlier lines (never those with a password), Tab completes
commands, rooms, users and file names, Ctrl-D or ``/quit`` leave, Ctrl-C cancels a transfer.

When standard input is not a terminal, lines are read plainly, one per line, so the client can be
scripted: ``printf '/login bob pw\\n/join general\\nhello\\n' | utuvox client``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout

from .client import Client, connect
from .errors import UtuVoxError
from .shell import Progress, Shell, is_secret

BAR_WIDTH = 30


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _History(InMemoryHistory):
    """Recalls earlier lines, except those that carry a password."""

    def append_string(self, string: str) -> None:
        if not is_secret(string):
            super().append_string(string)


class _Completer(Completer):
    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        word = text.rpartition(" ")[2]
        for candidate in self.shell.complete(text):
            yield Completion(candidate, start_position=-len(word))


class Terminal:
    """The screen: prints lines (above the prompt while one is shown), draws progress bars, reads lines."""

    def __init__(self, client: Client, *, downloads: Path, interactive: bool) -> None:
        self.client = client
        self.interactive = interactive
        self.shell = Shell(client, downloads=downloads, progress=self.progress)
        self.session: PromptSession[str] | None = (
            PromptSession(history=_History(), completer=_Completer(self.shell), complete_while_typing=False)
            if interactive else None
        )
        self.closed = False
        self._bar: str | None = None
        self._command: trio.CancelScope | None = None
        client.on_state.append(self._on_state)

    # --- output ---------------------------------------------------------------------------------

    def print_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        out = sys.stdout
        if self._bar is not None:
            out.write("\r\x1b[K")  # the bar's line is reused, then the bar is drawn again below
        out.write("".join(line + "\n" for line in lines))
        if self._bar is not None:
            out.write(self._bar)
        out.flush()
        self._refresh_prompt()

    def progress(self, label: str) -> Progress:
        shown = [-1]

        def update(done: int, total: int) -> None:
            percent = 100 if total == 0 else done * 100 // total
            if percent == shown[0] or not self.interactive:  # a pipe gets no bar, only the outcome
                return
            shown[0] = percent
            filled = BAR_WIDTH * percent // 100
            self._bar = (f"\r{label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:3d}% "
                         f"{human_size(done)}/{human_size(total)}\x1b[K")
            sys.stdout.write(self._bar)
            sys.stdout.flush()

        return update

    def _end_bar(self) -> None:
        if self._bar is not None:
            sys.stdout.write("\n")
            self._bar = None

    def _on_state(self, state: str, detail: str) -> None:
        self.print_lines(self.shell.on_state(state, detail))

    def _refresh_prompt(self) -> None:
        if self.session is not None and self.session.app.is_running:
            self.session.app.invalidate()  # thread-safe: the prompt may show a new user or room

    # --- input ----------------------------------------------------------------------------------

    def _read_line(self) -> str:
        if self.session is None:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            return line
        return self.session.prompt(lambda: self.shell.prompt)

    def _interrupt_prompt(self) -> None:
        if self.session is not None:
            app = self.session.app
            if app.is_running and app.loop is not None:
                app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

    # --- the loops ------------------------------------------------------------------------------

    async def _show_events(self) -> None:
        try:
            async for event in self.client:
                self.print_lines(self.shell.render_event(event))
        except UtuVoxError as exc:
            self.print_lines(self.shell.error(exc.message))
        self.closed = True
        self._interrupt_prompt()

    async def _cancel_on_ctrl_c(self) -> None:
        # At the prompt Ctrl-C is a key; while a command runs (a transfer) it is a signal, and it
        # cancels that command rather than the program.
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if self._command is not None:
                    self._command.cancel()
                elif not self.interactive:
                    self.closed = True
                    self._interrupt_prompt()
                    raise KeyboardInterrupt

    async def run(self) -> None:
        self.print_lines(self.shell.info(f"Connected to {self.client.url}. Type /help for the commands, "
                                         "/quit to leave."))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._show_events)
            nursery.start_soon(self._cancel_on_ctrl_c)
            while not self.shell.done and not self.closed:
                try:
                    line = await trio.to_thread.run_sync(self._read_line)
                except EOFError:
                    if not self.closed:  # Ctrl-D, or the end of piped input
                        self.print_lines(await self.shell.handle("/quit"))
                    break
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt clears the line
                lines: list[str] = []
                self._command = scope = trio.CancelScope()
                with scope:
                    lines = await self.shell.handle(line)
                self._command = None
                if scope.cancelled_caught:
                    lines = self.shell.info("Cancelled.")
                self._end_bar()
                self.print_lines(lines)
            nursery.cancel_scope.cancel()


async def run(url: str, *, downloads: Path = Path("downloads"), ca: Path | None = None) -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    try:
        async with connect(url, reconnect=True, ca=ca) as client:
            terminal = Terminal(client, downloads=downloads, interactive=interactive)
            if interactive:
                with patch_stdout(raw=True):
                    await terminal.run()
            else:
                await terminal.run()
    except OSError as exc:
        print(f"utuvox: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(url: str, downloads: Path, ca: Path | None = None) -> int:
    try:
        return trio.run(partial(run, url, downloads=downloads, ca=ca))
    except KeyboardInterrupt:
        return 130
