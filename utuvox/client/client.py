"""The UtuVox client: requests and their replies, server events, and reconnecting without losing any.

::

    async with connect("tcp://127.0.0.1:9090", reconnect=True) as client:
        await client.login("bob", "secret")
        await client.join("general")
        await client.message("hello")
        async for event in client:
            print(event)

A request waits for the reply with its ``id`` (any number may be in flight, from any number of tasks)
and raises :class:`UtuVoxError` if the server refuses it. Everything else the server sends (room events,
private messages, announcements, a goodbye) comes out of ``async for event in client`` as the protocol's
pydantic models, in the order the server sent them.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import trio

from utuvox.protocol import Code, Event, Reply, Request
from utuvox.protocol import core as p
from utuvox.protocol import files as f

from . import files as transfers
from .errors import BAD_FRAME, CLOSED, DISCONNECTED, TIMEOUT, Disconnected, UtuVoxError
from .link import Link
from .rooms import RoomTracker, fetch_after, room_key
from .transport import Address, open_transport, parse_url

log = logging.getLogger("utuvox.client")

R = TypeVar("R", bound=Reply)
StateCallback = Callable[[str, str], None]

# A goodbye with one of these codes means "do not come back": reconnecting would undo a quit, a kick
# or a ban. Any other goodbye (shutdown, slow consumer) or a broken connection is worth a retry.
FINAL_GOODBYES = frozenset({"quit", "ban", "banned", "kick", "kicked"})
# Login failures that no retry can fix.
FATAL_LOGIN = frozenset({"auth_failed", "banned", "no_such_user", "forbidden"})


class Client:
    """A connection to an UtuVox server. Make one with :func:`connect`.

    Attributes that follow what the server confirmed: :attr:`user`, :attr:`is_admin`, :attr:`is_bot`,
    :attr:`rooms` (in the order joined) and :attr:`current_room` (the last joined, where a ``message``
    without ``room`` goes).
    """

    def __init__(self, url: str, *, reconnect: bool = False,
                 retry_initial: float = 0.1, retry_max: float = 5.0, connect_timeout: float = 10.0,
                 keepalive: float | None = 30.0, on_state: StateCallback | None = None,
                 ca: str | Path | None = None) -> None:
        self.address: Address = parse_url(url)
        self.ca = ca  # the CA file a tcps:// or wss:// server's certificate is verified against
        self.reconnect = reconnect
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._retry_delay = retry_initial
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.on_state: list[StateCallback] = [on_state] if on_state else []
        self.user: str | None = None
        self.is_admin = False
        self.is_bot = False
        self._transports: trio.Nursery | None = None
        self._tracker = RoomTracker()
        self._credentials: tuple[str, str] | None = None
        self._link: Link | None = None
        self._changed = trio.Event()  # set (and replaced) whenever the link comes or goes
        self._closing = False
        self._failure: UtuVoxError | None = None
        # The server's goodbye that ended the client for good (a kick, a ban, the answer to quit), if any.
        self.goodbye: p.Goodbye | None = None
        self._run_scope = trio.CancelScope()
        # Unbounded: the reader must never wait on the application, or replies would stall behind
        # events nobody reads yet. An application that never reads events should not join rooms.
        self._events_in, self._events_out = trio.open_memory_channel[Any](math.inf)

    # --- state ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return str(self.address)

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def rooms(self) -> tuple[str, ...]:
        return tuple(self._tracker.rooms)

    @property
    def current_room(self) -> str | None:
        return self._tracker.current

    def last_seq(self, room: str) -> int:
        """The sequence number of the newest event of ``room`` handed to the application (0: none)."""
        return self._tracker.seen.get(room_key(room), 0)

    # --- events ---------------------------------------------------------------------------------

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event | Reply:
        try:
            return await self._events_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._failure is not None:
                raise self._failure from None
            raise StopAsyncIteration from None

    async def next_event(self, timeout: float | None = None) -> Event | Reply:
        """The next event. Raises :class:`Disconnected` once the client is closed for good, and
        ``trio.TooSlowError`` if ``timeout`` seconds pass first."""
        with trio.fail_after(math.inf if timeout is None else timeout):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                raise Disconnected("The client is closed.", code=CLOSED) from None

    def drain_events(self) -> list[Event | Reply]:
        """The events received and not taken yet, without waiting (empty if there are none)."""
        events: list[Event | Reply] = []
        while True:
            try:
                events.append(self._events_out.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return events

    # --- requests -------------------------------------------------------------------------------

    async def request(self, request: Request, *, timeout: float | None = None) -> Reply:
        """Send any request and return its reply; raise :class:`UtuVoxError` if the server refuses it.

        The ``id`` is filled in here. While a reconnecting client is away, the request waits for the
        connection to come back (and for the rooms to be rejoined) before it is sent.
        """
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                link = await self._ready_link()
                reply = await link.call(request)
        except trio.TooSlowError:
            raise UtuVoxError(TIMEOUT, f"No answer to '{request.type}' within {timeout} s.") from None
        if isinstance(reply, p.Error):
            if reply.code == Code.SHUTTING_DOWN:
                # Not taken, and the connection is about to end: to a bot, as good as disconnected.
                raise Disconnected(reply.message, code=reply.code)
            raise UtuVoxError(reply.code, reply.message, re=reply.re, retry_after=reply.retry_after)
        return reply

    async def call(self, request: Request, expected: type[R], *, timeout: float | None = None) -> R:
        """:meth:`request`, checking that the reply is of the ``expected`` type."""
        reply = await self.request(request, timeout=timeout)
        if not isinstance(reply, expected):
            raise UtuVoxError(BAD_FRAME, f"Expected '{expected.__name__}' in answer to '{request.type}', "
                                         f"got '{reply.type}'.")
        return reply

    # --- typed helpers: accounts ----------------------------------------------------------------

    async def register(self, username: str, password: str, *, admin_key: str | None = None,
                       bot: bool = False) -> p.LoggedIn:
        """Create an account and log in as it. ``bot=True`` marks it as a bot in user lists."""
        return await self.call(p.Register(username=username, password=password, admin_key=admin_key, bot=bot),
                               p.LoggedIn)

    async def login(self, username: str, password: str) -> p.LoggedIn:
        """Log in. A reconnecting client logs in again with these credentials after each reconnect."""
        return await self.call(p.Login(username=username, password=password), p.LoggedIn)

    async def sign_in(self, username: str, password: str, *, register: bool = False,
                      bot: bool = False) -> p.LoggedIn:
        """Log in; with ``register=True``, create the account first if it does not exist yet (the usual
        start of a bot: the first run registers, later runs log in)."""
        if register:
            try:
                return await self.register(username, password, bot=bot)
            except UtuVoxError as exc:
                if exc.code != "name_taken":
                    raise
        return await self.login(username, password)

    async def change_password(self, old_password: str, new_password: str) -> p.Ok:
        return await self.call(p.ChangePassword(old_password=old_password, new_password=new_password), p.Ok)

    changepassword = change_password

    async def whoami(self) -> p.WhoAmIReply:
        return await self.call(p.WhoAmI(), p.WhoAmIReply)

    async def whereami(self) -> p.WhereAmIReply:
        return await self.call(p.WhereAmI(), p.WhereAmIReply)

    async def help(self) -> p.HelpReply:
        return await self.call(p.Help(), p.HelpReply)

    async def ping(self) -> float:
        """Round-trip time to the server, in seconds."""
        start = trio.current_time()
        await self.call(p.Ping(), p.Pong)
        return trio.current_time() - start

    async def quit(self) -> p.Goodbye:
        """Say goodbye; the server closes the connection and the client does not reconnect."""
        self._closing = True
        link = await self._ready_link()
        try:
            reply = await link.call(p.Quit())
        except Disconnected:
            # The server's goodbye may not carry the request's id; the connection closing after it is
            # the answer.
            if link.goodbye is not None:
                return link.goodbye
            raise
        if isinstance(reply, p.Error):
            raise UtuVoxError(reply.code, reply.message, re=reply.re)
        return reply if isinstance(reply, p.Goodbye) else p.Goodbye(reason="Goodbye.", code="quit")

    # --- typed helpers: rooms and messages ------------------------------------------------------

    async def create(self, room: str) -> p.Joined:
        """Create a room and join it (it becomes the current room)."""
        return await self.call(p.Create(room=room), p.Joined)

    async def join(self, room: str, *, since: int | None = None) -> p.Joined:
        """Join a room (it becomes the current room). The reply carries the recent history.

        With ``since``, every event of the room with a sequence number above it is yielded as an event
        first, oldest first, then the live ones: a bot that saved the last number it handled resumes
        with no gap and no repeat.
        """
        if since is None:
            return await self.call(p.Join(room=room), p.Joined)
        link = await self._ready_link()
        # Tracked before the server answers: if the connection breaks mid-way, the reconnect finishes
        # the catch-up from ``since``.
        self._tracker.entered(room)
        return await self._catch_up(link, room, after=since)

    async def leave(self, room: str | None = None) -> p.Left:
        """Leave ``room`` (default: the current room)."""
        return await self.call(p.Leave(room=room), p.Left)

    async def message(self, text: str, room: str | None = None, *, action: bool = False) -> p.Ok:
        """Say ``text`` in ``room`` (default: the current room); ``action`` makes it an action, IRC's
        ``/me`` ("* alice waves"). Returns once the server has stored it; the reply carries the message's
        ``seq``. The message also comes back as an event."""
        return await self.call(p.Message(text=text, room=room, action=action or None), p.Ok)

    async def msg(self, to: str, text: str) -> p.Ok:
        """Send a private message to every session of user ``to``."""
        return await self.call(p.Msg(to=to, text=text), p.Ok)

    async def history(self, room: str, *, before: int | None = None, limit: int | None = None) -> p.HistoryPage:
        """A page of the room's history, oldest first: the ``limit`` events before sequence number
        ``before`` (default: the newest). ``more`` says whether older ones exist."""
        return await self.call(p.History(room=room, before=before, limit=limit), p.HistoryPage)

    async def list_all_users(self, *, limit: int | None = None, after: str | None = None) -> p.UserList:
        """Everyone online, each once, by name, a page at a time (``next``: the ``after`` of the next page);
        ``UserInfo.is_bot`` marks bots."""
        return await self.call(p.ListAllUsers(limit=limit, after=after), p.UserList)

    async def list_users_in_room(self, room: str | None = None) -> p.UserList:
        return await self.call(p.ListUsersInRoom(room=room), p.UserList)

    async def list_all_rooms(self, *, limit: int | None = None, after: str | None = None) -> p.RoomList:
        """The rooms by name, a page at a time (``next``: the ``after`` of the next page)."""
        return await self.call(p.ListAllRooms(limit=limit, after=after), p.RoomList)

    async def list_files(self, room: str | None = None) -> f.FileList:
        """The files shared in ``room`` (default: the current room), oldest first."""
        return await self.call(f.ListFiles(room=room), f.FileList)

    # --- files ----------------------------------------------------------------------------------

    async def upload(self, room: str, path: str | Path,
                     progress: Callable[[int, int], None] | None = None) -> f.Uploaded:
        """Share the file at ``path`` in ``room`` (you must be in it). ``progress(done, total)`` is called
        as the server acknowledges bytes. Returns the ``uploaded`` reply; ``.name`` is the file's unique
        name, which others download it by."""
        return await transfers.upload(self._ready_link, room, Path(path), progress)

    async def download(self, name: str, dir: str | Path = "downloads",
                       progress: Callable[[int, int], None] | None = None) -> Path:
        """Fetch the shared file ``name`` into ``dir`` (never overwriting a file there) and return the
        path written. The content is checked against the server's sha256 before it appears."""
        return await transfers.download(self._ready_link, name, Path(dir), progress)

    # --- lifecycle ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection and stop reconnecting. Waiting requests fail with :class:`Disconnected`."""
        self._closing = True
        if self._link is not None:
            self._link.close("closed by the client")
        self._run_scope.cancel()  # stops a reconnect that is waiting or under way

    def _notify(self, state: str, detail: str) -> None:
        for callback in self.on_state:
            try:
                callback(state, detail)
            except Exception:
                log.exception("state callback failed")

    def _set_link(self, link: Link | None) -> None:
        self._link = link
        self._changed.set()
        self._changed = trio.Event()

    async def _ready_link(self) -> Link:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._link is not None and not self._link.closed.is_set():
                return self._link
            if self._closing or not self.reconnect:
                raise Disconnected("The client is closed." if self._closing else "Not connected to the server.",
                                   code=CLOSED if self._closing else DISCONNECTED)
            await self._changed.wait()

    # --- the connection's life ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then serve the connection; reconnect after it breaks if asked to. :func:`connect`
        starts this; ``task_status.started()`` comes once the first connection answers."""
        # WebSockets keep a reader task of their own. They live in this nursery, outside the scope that
        # aclose() cancels, so that a closing handshake still has a reader to hear the server's answer.
        async with trio.open_nursery() as self._transports:
            with self._run_scope:
                link = await self._open()
                await self._serve_until_done(link, task_status)

    async def _serve_until_done(self, link: Link, task_status: Any) -> None:
        first = True
        try:
            while True:
                try:
                    await self._serve(link, first, task_status)
                except UtuVoxError as exc:
                    if first:
                        raise
                    if not isinstance(exc, Disconnected):  # the server refused the login: give up
                        log.error("cannot resume the session: %s", exc.message)
                        self._failure = exc
                        break
                finally:
                    self._set_link(None)
                    link.close(link.reason or "closed")
                    await link.transport.aclose()
                first = False
                final = link.goodbye is not None and link.goodbye.code in FINAL_GOODBYES
                if final:
                    self.goodbye = link.goodbye
                if self._closing or not self.reconnect or final:
                    break
                self._notify("disconnected", link.reason)
                log.info("connection to %s lost (%s); reconnecting", self.address, link.reason)
                link = await self._reopen()
        finally:
            self._closing = True
            self._events_in.close()
            self._notify("closed", self._failure.message if self._failure else link.reason)
            self._changed.set()

    async def _open(self) -> Link:
        assert self._transports is not None, "run() opens the transports' nursery"
        transport = await open_transport(self.address, self._transports, timeout=self.connect_timeout, ca=self.ca)
        return Link(transport)

    async def _reopen(self) -> Link:
        while True:
            # Jitter, so that a hundred bots cut off together do not all come back in the same instant.
            # The delay keeps growing until a connection is fully restored, so a server that accepts
            # connections but cannot serve them yet is not hammered either.
            await trio.sleep(self._retry_delay * random.uniform(0.5, 1.0))
            self._retry_delay = min(self._retry_delay * 2, self.retry_max)
            try:
                return await self._open()
            except OSError as exc:
                log.debug("reconnect to %s failed: %s", self.address, exc)

    async def _serve(self, link: Link, first: bool, task_status: Any) -> None:
        try:
            await self._serve_link(link, first, task_status)
        except BaseExceptionGroup as group:
            raise _sole(group) from None

    async def _serve_link(self, link: Link, first: bool, task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.read, self._on_frame, self._learn)
            # On TCP the server tells JSON from text by the first byte, and waits only briefly: speak now.
            await link.call(p.Ping(), track=False)
            if not first:
                await self._restore(link)
            self._set_link(link)
            self._retry_delay = self.retry_initial
            if first:
                task_status.started()
            else:
                self._notify("reconnected", self.url)
            if self.keepalive:
                nursery.start_soon(self._keep_alive, link, self.keepalive)
            await link.closed.wait()
            nursery.cancel_scope.cancel()

    async def _keep_alive(self, link: Link, every: float) -> None:
        """A server that vanished without closing (power loss, a cut cable) is noticed within ``2 * every``."""
        while True:
            await trio.sleep(every)
            with trio.move_on_after(every):
                try:
                    await link.call(p.Ping(), track=False)
                except Disconnected:
                    return
                continue
            link.close("the server stopped answering")
            return

    async def _restore(self, link: Link) -> None:
        """After a reconnect: log in again, rejoin every room in the same order (so the current room is
        the same), and fetch from history what was missed."""
        self._tracker.hold_all()
        if self._credentials is not None:
            username, password = self._credentials
            reply = await link.call(p.Login(username=username, password=password))
            if isinstance(reply, p.Error):
                if reply.code in FATAL_LOGIN:
                    raise UtuVoxError(reply.code, f"Could not log in again: {reply.message}")
                link.close(f"could not log in again: {reply.message}")  # transient (busy server): retry
                raise Disconnected(link.reason)
        for room in list(self._tracker.rooms):
            try:
                await self._catch_up(link, room, after=self._tracker.seen.get(room_key(room), 0))
            except Disconnected:
                raise
            except UtuVoxError as exc:
                log.warning("could not rejoin %s: %s", room, exc.message)

    async def _catch_up(self, link: Link, room: str, *, after: int) -> p.Joined:
        async def call(request: Request) -> Reply:
            reply = await link.call(request, track=False)
            if isinstance(reply, p.Error):
                raise UtuVoxError(reply.code, reply.message, retry_after=reply.retry_after)
            return reply

        self._tracker.hold(room, after)
        try:
            joined = await call(p.Join(room=room))
            if not isinstance(joined, p.Joined):
                raise UtuVoxError(BAD_FRAME, f"Expected 'joined', got '{joined.type}'.")
            self._tracker.entered(joined.room)
            missed = await fetch_after(call, joined, after)
        except Disconnected:
            raise  # the room stays held and tracked: the next connection catches it up
        except UtuVoxError:
            self._release(room, [])
            self._tracker.left(room)  # refused (the room is gone): nothing to rejoin
            raise
        except BaseException:
            self._release(room, [])
            raise
        self._release(joined.room, missed)
        return joined

    def _release(self, room: str, missed: list[Any]) -> None:
        for event in self._tracker.release(room, missed):
            try:
                self._events_in.send_nowait(event)
            except trio.ClosedResourceError:
                return

    # --- what the reader hands over -------------------------------------------------------------

    def _on_frame(self, link: Link, frame: Any) -> None:
        if isinstance(frame, p.Keepalive):
            return  # the server checking that the connection is alive: nothing for the application
        if isinstance(frame, p.RoomDeleted):
            self._tracker.left(frame.room)
        if self._tracker.admit(frame):
            with suppress(trio.ClosedResourceError):
                self._events_in.send_nowait(frame)

    def _learn(self, request: Request, reply: Reply) -> None:
        """Follow what the server confirmed, so a reconnect can put it back."""
        if isinstance(reply, p.Error):
            return
        if isinstance(reply, p.LoggedIn) and isinstance(request, p.Login | p.Register):
            self.user, self.is_admin, self.is_bot = reply.user, reply.is_admin, reply.is_bot
            self._credentials = (reply.user, request.password)
        elif isinstance(reply, p.Joined):
            self._tracker.joined(reply)
        elif isinstance(reply, p.Left):
            self._tracker.left(reply.room)
        elif isinstance(request, p.ChangePassword) and self._credentials is not None:
            self._credentials = (self._credentials[0], request.new_password)


@asynccontextmanager
async def connect(url: str = "tcp://127.0.0.1:9090", *, reconnect: bool = False, retry_initial: float = 0.1,
                  retry_max: float = 5.0, connect_timeout: float = 10.0, keepalive: float | None = 30.0,
                  on_state: StateCallback | None = None, ca: str | Path | None = None) -> AsyncIterator[Client]:
    """Connect to the server at ``url`` (``tcp://host:port`` or ``ws://host:port``; ``tcps://`` and
    ``wss://`` for TLS, where the server's certificate is verified against the system's CAs, or against
    the CA file ``ca``).

    With ``reconnect=True`` a broken connection is retried with exponential backoff (from
    ``retry_initial`` to ``retry_max`` seconds); then the client logs in again, rejoins its rooms and
    yields what it missed before anything new. ``on_state(state, detail)`` hears ``"disconnected"``,
    ``"reconnected"`` and ``"closed"``. The first connection is not retried: if the server cannot be
    reached, this raises ``OSError``.
    """
    try:
        async with trio.open_nursery() as nursery:
            client = Client(url, reconnect=reconnect, retry_initial=retry_initial, retry_max=retry_max,
                            connect_timeout=connect_timeout, keepalive=keepalive, on_state=on_state, ca=ca)
            await nursery.start(client.run)
            try:
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        raise _sole(group) from None


def _sole(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception inside a group from a nursery, or the group if there are several.

    Nurseries are an implementation detail: callers catch ``UtuVoxError`` (or their own exception from
    inside ``async with connect()``), not a group of one.
    """
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group
