"""``utuvox client``: the terminal client. A prompt_toolkit line editor in front of :class:`Shell`.

The prompt (``(bob@general)>``) runs in a worker thread; trio keeps the connection in the main thread.
Incoming lines go through prompt_toolkit's ``patch_stdout``, which prints them above the line being
typed, never into it; the line typed is erased once sent (what was said comes back from the server,
once). Up/Down recall earlier lines (never those with a password), Tab completes commands, rooms, nicks
and paths, Ctrl-D or ``/quit`` leave.

``/upload`` and ``/download`` run in the background: their progress bars sit below the prompt and chat
goes on; Ctrl-C at the prompt cancels them. A paste of several lines sends one message per line, asking
first when there are more than ``paste_lines`` (as irssi's ``paste_verify_line_count`` does), and waits
out the server's rate limit rather than losing lines.

When standard input is not a terminal, lines are read plainly, one per line, so the client can be
scripted: ``printf '/login bob pw\\n/join general\\nhello\\n' | utuvox client``. Exit status: 0 after
``/quit`` or the end of input; 1 when the server cannot be reached or, in a script, when a /login or
/register is refused (the rest of the script would run as nobody); 2 for a mistaken URL; 3 when the
server ends the session for good (kicked, banned).
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

from utuvox.protocol.safe_text import clean
from utuvox.protocol.units import byte_size as size

from .client import Client, connect
from .errors import UtuVoxError
from .probe import UrlMistake, check_url, explain_failure
from .shell import DEFAULT_TIME_FORMAT, Progress, Shell, is_secret
from .transport import Address

BAR_WIDTH = 30
SLOW_CONNECT = 0.7  # seconds without a connection before looking at what answers
PASTE_LINES = 5  # a paste of more lines than this is sent only once confirmed
EXIT_REFUSED, EXIT_URL, EXIT_ENDED = 1, 2, 3
ENDED_CODES = frozenset({"kick", "kicked", "ban", "banned"})


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
            yield Completion(candidate, start_position=-len(word), display=candidate.rstrip())


class Terminal:
    """The screen: prints lines (above the prompt while one is shown), draws progress bars, reads lines."""

    def __init__(self, client: Client, *, downloads: Path, interactive: bool,
                 time_format: str = DEFAULT_TIME_FORMAT, paste_lines: int = PASTE_LINES) -> None:
        self.client = client
        self.interactive = interactive
        self.paste_lines = paste_lines
        self.shell = Shell(client, downloads=downloads, progress=self.progress, time_format=time_format)
        self.session: PromptSession[str] | None = (
            PromptSession(history=_History(), completer=_Completer(self.shell), complete_while_typing=False,
                          erase_when_done=True, bottom_toolbar=self._toolbar)
            if interactive else None
        )
        self.closed = False
        self._bars: dict[int, str] = {}  # transfer -> its progress bar, shown below the prompt
        self._transfers: dict[int, trio.CancelScope] = {}
        self._next_transfer = 0
        self._command: trio.CancelScope | None = None
        self._reading = trio.CancelScope()
        client.on_state.append(self._on_state)

    # --- output ---------------------------------------------------------------------------------

    def print_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        self._refresh_prompt()

    def _toolbar(self) -> str | None:
        return "\n".join(self._bars.values()) or None

    def progress(self, label: str) -> Progress:
        key = self._next_transfer
        self._next_transfer += 1
        shown = [-1]

        def update(done: int, total: int) -> None:
            percent = 100 if total == 0 else done * 100 // total
            if percent == shown[0] or not self.interactive:  # a pipe gets no bar, only the outcome
                return
            shown[0] = percent
            filled = BAR_WIDTH * percent // 100
            self._bars[key] = (f"{label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:3d}% "
                               f"{size(done)}/{size(total)}")
            self._refresh_prompt()

        return update

    def _on_state(self, state: str, detail: str) -> None:
        self.print_lines(self.shell.on_state(state, detail))

    def _refresh_prompt(self) -> None:
        if self.session is not None and self.session.app.is_running:
            self.session.app.invalidate()  # thread-safe: the prompt may show a new user, room or bar

    # --- input ----------------------------------------------------------------------------------

    def _read_line(self) -> str:
        if self.session is None:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            return line
        return self.session.prompt(lambda: self.shell.prompt)

    def _confirm(self, question: str) -> bool:
        assert self.session is not None
        try:
            return self.session.prompt(question).strip().lower() in ("y", "yes")
        except (EOFError, KeyboardInterrupt):
            return False

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
        if not self.interactive:
            self._reading.cancel()  # a script's input may stay open: stop waiting for it

    async def _cancel_on_ctrl_c(self) -> None:
        # At the prompt Ctrl-C is a key; while a command runs in the foreground (a script's transfer) it
        # is a signal, and it cancels that command rather than the program.
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if self._command is not None:
                    self._command.cancel()
                elif not self.interactive:
                    self.closed = True
                    self._interrupt_prompt()
                    raise KeyboardInterrupt

    async def _transfer(self, line: str, key: int, scope: trio.CancelScope) -> None:
        lines: list[str] = []
        with scope:
            lines = await self.shell.handle(line)
        self._transfers.pop(key, None)
        self._bars.pop(key, None)
        self.print_lines(self.shell.info("Transfer cancelled.") if scope.cancelled_caught else lines)

    async def _paste(self, text: str) -> list[str]:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > self.paste_lines and self.interactive:
            question = f"Send {len(lines)} pasted lines as {len(lines)} messages? [y/N] "
            if not await trio.to_thread.run_sync(self._confirm, question):
                return self.shell.info("Paste not sent.")
        return await self.shell.send_all(lines)

    async def run(self) -> int:
        """Read and run lines until /quit, the end of input or the end of the session; the exit status."""
        self.print_lines(self.shell.info(f"Connected to {self.client.url}. Type /help for the commands, "
                                         "/quit to leave."))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._show_events)
            nursery.start_soon(self._cancel_on_ctrl_c)
            while not self.shell.done and not self.closed:
                try:
                    self._reading = trio.CancelScope()
                    if self.closed:
                        break
                    with self._reading:
                        line = await trio.to_thread.run_sync(self._read_line, abandon_on_cancel=not self.interactive)
                    if self._reading.cancelled_caught:
                        break
                except EOFError:
                    if not self.closed:  # Ctrl-D, or the end of piped input
                        self.print_lines(await self.shell.handle("/quit"))
                    break
                except KeyboardInterrupt:
                    # Ctrl-C at the prompt clears the line, and cancels the transfers under way.
                    for scope in list(self._transfers.values()):
                        scope.cancel()
                    continue
                line = line.rstrip("\r\n")
                if "\n" in line or "\r" in line:
                    self.print_lines(await self._paste(line.replace("\r\n", "\n").replace("\r", "\n")))
                    continue
                if self.interactive and self.shell.is_transfer(line):
                    key, scope = self._next_transfer, trio.CancelScope()
                    self._transfers[key] = scope
                    nursery.start_soon(self._transfer, line, key, scope)
                    continue
                lines: list[str] = []
                self._command = scope = trio.CancelScope()
                with scope:
                    lines = await self.shell.handle(line)
                self._command = None
                if scope.cancelled_caught:
                    lines = self.shell.info("Cancelled.")
                self.print_lines(lines)
                if self.shell.login_refused and not self.interactive:
                    break  # a script whose login failed would run the rest as nobody
            nursery.cancel_scope.cancel()
        goodbye = self.client.goodbye
        if goodbye is not None and goodbye.code in ENDED_CODES:
            return EXIT_ENDED
        if self.shell.login_refused and not self.interactive:
            return EXIT_REFUSED
        return 0


async def run(url: str, *, downloads: Path = Path("downloads"), ca: Path | None = None,
              time_format: str = DEFAULT_TIME_FORMAT, paste_lines: int = PASTE_LINES) -> int:
    try:
        address = check_url(url)
    except UrlMistake as exc:
        print(f"utuvox: {exc}", file=sys.stderr)
        return EXIT_URL
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    mistake: list[str] = []
    try:
        try:
            with trio.CancelScope() as attempt:
                async with trio.open_nursery() as nursery:
                    watch = trio.CancelScope()
                    nursery.start_soon(_watch_connect, address, watch, attempt, mistake)
                    async with connect(url, reconnect=True, ca=ca) as client:
                        watch.cancel()
                        terminal = Terminal(client, downloads=downloads, interactive=interactive,
                                            time_format=time_format, paste_lines=paste_lines)
                        if interactive:
                            with patch_stdout(raw=True):
                                return await terminal.run()
                        return await terminal.run()
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except (OSError, UtuVoxError) as exc:
        # Refused, unreachable, a TLS failure, or something that is not an UtuVox server answering.
        found = mistake[0] if mistake else await explain_failure(address)
        if found is not None:
            print(f"utuvox: {found}", file=sys.stderr)
            return EXIT_URL
        print(f"utuvox: cannot connect to {address}: {clean(_reason(exc))}", file=sys.stderr)
        return EXIT_REFUSED
    # Cancelled: while the connection was slow in coming, the watcher found that this is the wrong port.
    print(f"utuvox: {mistake[0]}", file=sys.stderr)
    return EXIT_URL


def _sole(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _watch_connect(address: Address, watch: trio.CancelScope, attempt: trio.CancelScope,
                         mistake: list[str]) -> None:
    """A connection that is slow in coming may be to the wrong port, which would answer nothing useful
    before a timeout: look at what answers there, and give up the attempt at once if it is the other port."""
    with watch:
        await trio.sleep(SLOW_CONNECT)
        found = await explain_failure(address)
        if found is not None:
            mistake.append(found)
            attempt.cancel()


def _reason(exc: BaseException) -> str:
    """The innermost cause worth showing: ``Connection refused`` rather than trio's "all attempts failed"."""
    pending, visited = [exc], set()
    while pending:
        seen = pending.pop(0)
        if id(seen) in visited:
            continue
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        if isinstance(seen, BaseExceptionGroup):  # one failure per address tried
            pending += seen.exceptions
        pending += [e for e in (seen.__cause__, seen.__context__) if e is not None]
    return getattr(exc, "message", None) or str(exc)


def main(url: str, downloads: Path, ca: Path | None = None, *, time_format: str = DEFAULT_TIME_FORMAT,
         paste_lines: int = PASTE_LINES) -> int:
    try:
        return trio.run(partial(run, url, downloads=downloads, ca=ca, time_format=time_format,
                                paste_lines=paste_lines))
    except KeyboardInterrupt:
        return 130
