"""File sharing: uploads in chunks, downloads by unique name, a room's file list. Rules, not sockets.

:func:`install` registers its commands and hooks on a :class:`~utuvox.chat.service.Chat` and returns the
:class:`FileService`, whose :meth:`~FileService.run` must run in the server's nursery (it hosts the
upload writers and the download streams, and cleans up at startup).

Where the bytes go. An upload streams into ``<data dir>/uploads.tmp/<upload id>.part``; only once its
size and SHA-256 check out is it linked into ``uploads/`` under its unique name (never replacing a file),
and then its row is committed and the room told. Anything that goes wrong before that (a dropped
connection, a wrong hash, too many bytes, a full disk, the room deleted) leaves nothing in ``uploads/``
and no row. Temporary files left by a crash are removed at startup.

Memory stays flat. A session's chunks are gathered into batches of ``write_batch_bytes``; each batch is
hashed and written by a worker thread while the event loop goes on decoding the next chunks (hashlib and
file writes release the GIL, so a second core does that work). At most two batches per upload are in
flight. Downloads read ``read_block_bytes`` at a time in a worker thread and hand chunk frames to
``peer.send_paced``, which waits while the session's send queue is full: a slow reader slows its own
download, it is not cut off, and the server never holds more than a block or two of any file.

Names. The unique name is ``<room>_<YYYYMMDD_HHMMSS>_<safe original>_<8 hex>`` (UTC), made only of
``[A-Za-z0-9._-]``, where the safe original is the announced name's last path component with every other
character replaced by ``_``. No path from a client ever reaches the file system: downloads look the name
up in the store, and the path is built from the stored name and checked to be directly in ``uploads/``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import trio
from pydantic import Field

from utuvox.protocol import Code, ProtocolError, Reply, as_datetime
from utuvox.protocol import core as p
from utuvox.protocol import files as f
from utuvox.protocol.files import FileCode
from utuvox.protocol.safe_text import clean
from utuvox.protocol.units import byte_size as size
from utuvox.store import Conflict, FileRecord, StoreError

from .commands import messages
from .limits import charged
from .rooms import Room
from .section import NOT_A_SETTING, Env, Section
from .service import Call, Chat, Command
from .session import Session

log = logging.getLogger("utuvox.files")

MiB = 1024 * 1024


class FileConfig(Section):
    """The limits and tunables of file sharing."""

    # Where the files go, filled in by the server from its data directory.
    uploads_dir: Annotated[Path, NOT_A_SETTING] = Field(default=Path("uploads"), description="finished uploads")
    temp_dir: Annotated[Path, NOT_A_SETTING] = Field(default=Path("uploads.tmp"),
                                                     description="uploads in progress (on the file system of uploads)")
    max_upload_bytes: int = Field(default=100 * MiB, ge=0, description="largest file a client may upload")
    max_uploads_per_session: int = Field(default=4, ge=1, description="uploads one connection may have in progress")
    max_uploads_per_user: int = Field(default=4, ge=1,
                                      description="uploads one user may have in progress, all connections")
    max_uploads_total: int = Field(default=64, ge=1, description="uploads in progress on the whole server")
    max_downloads_per_session: int = Field(default=4, ge=1, description="downloads one connection may have in progress")
    max_downloads_total: int = Field(default=64, ge=1, description="downloads in progress on the whole server")
    max_list_files: int = Field(default=200, ge=1, description="newest files listed by list_files")
    # Filled in by the server from the largest frame a client may send.
    chunk_size: Annotated[int, NOT_A_SETTING] = Field(default=f.chunk_size_for_frame(64 * 1024), ge=1,
                                                      description="bytes of file data in one chunk frame")
    write_batch_bytes: Annotated[int, Env("file_write_batch_bytes")] = Field(default=1 * MiB, ge=4096,
                                                                             description="upload bytes gathered per "
                                                                                         "disk write")
    read_block_bytes: Annotated[int, Env("file_read_block_bytes")] = Field(default=1 * MiB, ge=4096,
                                                                           description="download bytes read per disk "
                                                                                       "read")
    io_threads: Annotated[int, Env("file_io_threads")] = Field(default=4, ge=1,
                                                               description="worker threads for file reads and writes")
    upload_idle_timeout: float = Field(default=300.0, gt=0,
                                       description="seconds without a chunk before an upload is dropped")
    min_free_bytes: Annotated[int, Env("min_free_disk_bytes")] = Field(default=64 * MiB, ge=0,
                                                                       description="free space an upload must leave")


# --- names ----------------------------------------------------------------------------------------

_MAX_PARTS = 512  # chunks per disk write at most (well under IOV_MAX), however small the chunks
SAFE_MAX = 100  # characters of the original name kept in the unique name
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_UNIQUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_OUR_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*_\d{8}_\d{6}_[A-Za-z0-9._-]+_[0-9a-f]{8}$")


def last_component(name: str) -> str:
    """What follows the last ``/`` or ``\\`` (clients should send bare names; some send paths)."""
    return re.split(r"[/\\]", name)[-1]


def display_original(name: str) -> str:
    """The original name as shown and stored: its last path component, control and bidi characters
    replaced, never empty, ``.`` or ``..`` (a careless client may save a download under it)."""
    base = clean(last_component(name)).strip()
    return base if base not in ("", ".", "..") else "file"


def safe_component(name: str) -> str:
    """The original name as it appears inside a unique name: ``[A-Za-z0-9._-]`` only, no leading dot,
    at most ``SAFE_MAX`` characters (keeping the extension when it has to cut)."""
    safe = _UNSAFE.sub("_", last_component(name)).lstrip(".")
    if not safe.strip("_."):
        return "file"
    if len(safe) > SAFE_MAX:
        _, dot, ext = safe.rpartition(".")
        ext = dot + ext if dot and len(ext) <= 16 else ""
        safe = safe[: SAFE_MAX - len(ext)] + ext
    return safe


def unique_name(room: str, when: datetime, original: str, salt: str) -> str:
    short = hashlib.sha256(salt.encode()).hexdigest()[:8]
    return f"{room}_{when.astimezone(UTC):%Y%m%d_%H%M%S}_{safe_component(original)}_{short}"


def is_unique_name(name: str) -> bool:
    """Whether ``name`` could be a unique name at all (else it is refused before any lookup)."""
    return bool(_UNIQUE_NAME.match(name)) and not name.endswith("\n")


# --- state ----------------------------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class _Upload:
    id: str
    session: Session
    room: Room
    original: str
    size: int
    sha256: str
    uploader: str
    temp: Path
    send: trio.MemorySendChannel[list[bytes]]
    receive: trio.MemoryReceiveChannel[list[bytes]]
    received: int = 0  # bytes accepted so far: the offset the next chunk must have
    parts: list[bytes] = field(default_factory=list)
    parted: int = 0  # bytes in `parts`
    file: BinaryIO | None = None
    hasher: Any = field(default_factory=hashlib.sha256)
    written: int = 0
    write_error: OSError | None = None
    writer_done: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)
    over: bool = False  # failed, abandoned or stored: accepts nothing more
    last_activity: float = field(default_factory=trio.current_time)


@dataclass(eq=False)
class _Download:
    id: str
    session: Session
    room_key: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: _Failed | None = None  # why it was stopped from outside (the room deleted)


class FileService:
    def __init__(self, chat: Chat, config: FileConfig) -> None:
        self.chat = chat
        self.config = config
        self.io = trio.CapacityLimiter(config.io_threads)
        self.uploads: dict[int, dict[str, _Upload]] = {}  # by session id, then upload id
        self.tombstones: dict[int, OrderedDict[str, tuple[str, str]]] = {}  # recently failed uploads
        self.downloads: dict[int, dict[str, _Download]] = {}
        self._nursery: trio.Nursery | None = None
        self._linking: set[str] = set()  # names in uploads/ whose row is being committed
        # statistics
        self.uploads_stored = 0
        self.uploads_failed = 0
        self.downloads_done = 0

    @property
    def uploads_in_progress(self) -> int:
        return sum(map(len, self.uploads.values()))

    def in_progress(self, user_key: str) -> int:
        """What the user's uploads still in progress count against today's volume."""
        return sum(charged(up.size) for s in self.chat.sessions_of(user_key)
                   for up in self.uploads.get(s.id, {}).values())

    @property
    def downloads_in_progress(self) -> int:
        return sum(map(len, self.downloads.values()))

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Clean up after a previous run, then host upload writers and downloads until cancelled."""
        await trio.to_thread.run_sync(self._prepare_dirs)
        await self._sweep_orphans()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reap_idle_uploads)
            task_status.started(self)
            await trio.sleep_forever()

    def _prepare_dirs(self) -> None:
        self.config.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.config.temp_dir.mkdir(parents=True, exist_ok=True)
        stale = 0
        for entry in os.scandir(self.config.temp_dir):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    stale += 1
        if stale:
            log.info("removed %d stale temporary upload file(s) from %s", stale, self.config.temp_dir)

    async def _sweep_orphans(self, prefix: str = "") -> None:
        """Remove files of ours (by the shape of their name) in uploads/ that have no row: left by a crash
        between linking and committing, or by a room deleted while its rows were already gone.

        Safe while uploads complete: a name is in ``_linking`` from before its file appears until after its
        row is committed, so a name not in ``_linking`` *before* the rows are read is either an orphan or
        already has its row."""
        directory = self.config.uploads_dir

        def scan() -> list[str]:
            return [e.name for e in os.scandir(directory)
                    if e.name.startswith(prefix) and _OUR_FILE.match(e.name) and e.is_file(follow_symlinks=False)]

        candidates = [n for n in await trio.to_thread.run_sync(scan, limiter=self.io) if n not in self._linking]
        if not candidates:
            return
        known = await self.chat.store.file_names()
        orphans = [n for n in candidates if n not in known]

        def remove() -> int:
            removed = 0
            for name in orphans:
                with contextlib.suppress(OSError):
                    os.unlink(directory / name)
                    removed += 1
            return removed

        removed = await trio.to_thread.run_sync(remove, limiter=self.io)
        if removed:
            log.warning("removed %d file(s) without a row from %s", removed, directory)

    async def _reap_idle_uploads(self) -> None:
        timeout = self.config.upload_idle_timeout
        while True:
            await trio.sleep(max(0.05, min(timeout / 4, 30.0)))
            cutoff = trio.current_time() - timeout
            for up in [u for per in self.uploads.values() for u in per.values() if u.last_activity < cutoff]:
                await self._abandon(up, _Failed(Code.LIMIT_REACHED,
                                                f"Upload abandoned: nothing received for {timeout:g} seconds."),
                                    notify=True)

    def _spawn(self, fn: Any, *args: Any) -> None:
        """Start ``fn(*args)`` in the service's nursery (``fn=None``: only check that it is running)."""
        if self._nursery is None:
            raise ProtocolError(Code.NOT_SUPPORTED, "File sharing is not running on this server.")
        if fn is not None:
            self._nursery.start_soon(fn, *args)

    # --- hooks ----------------------------------------------------------------------------------

    async def on_disconnect(self, session: Session) -> None:
        for up in list(self.uploads.get(session.id, {}).values()):
            await self._abandon(up, _Failed(Code.INTERNAL, "connection closed"), notify=False)
        self.uploads.pop(session.id, None)
        self.tombstones.pop(session.id, None)
        for dl in list(self.downloads.pop(session.id, {}).values()):
            dl.scope.cancel()

    async def on_room_deleted(self, room: Room) -> None:
        """Abandon uploads into the room, then remove its files' rows and bytes."""
        for per in list(self.uploads.values()):
            for up in [u for u in per.values() if u.room is room or u.room.key == room.key]:
                await self._abandon(up, _Failed(Code.NO_SUCH_ROOM, f"Room '{room.name}' was deleted."), notify=True)
        for downloads in list(self.downloads.values()):
            for dl in [d for d in downloads.values() if d.room_key == room.key]:
                dl.stopped = _Failed(Code.NO_SUCH_ROOM, f"Room '{room.name}' was deleted.")
                dl.scope.cancel()
        records = await self.chat.store.delete_files_of_room(room.id)
        paths = [self.path_of(r.name) for r in records]

        def remove() -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        await trio.to_thread.run_sync(remove, limiter=self.io)
        # If the room's rows went with the room already (ON DELETE CASCADE), find its files by name.
        await self._sweep_orphans(prefix=f"{room.name}_")
        log.info("room %s deleted: removed %d file(s)", room.name, len(records))

    # --- helpers --------------------------------------------------------------------------------

    def path_of(self, name: str) -> Path:
        """The path of a stored file; refuses anything that would not be directly inside uploads/."""
        if not is_unique_name(name) or name in (".", ".."):
            raise ProtocolError(FileCode.NO_SUCH_FILE, "No such file.")
        path = self.config.uploads_dir / name
        if path.parent != self.config.uploads_dir or path.name != name:
            raise ProtocolError(FileCode.NO_SUCH_FILE, "No such file.")
        return path

    @staticmethod
    def may_use(session: Session, room: Room) -> bool:
        return room.name in session.rooms or session.is_operator

    @staticmethod
    def who(session: Session) -> str:
        return session.user.name if session.user is not None else session.actor

    def _check_member(self, session: Session, room: Room, doing: str) -> None:
        if not self.may_use(session, room):
            raise ProtocolError(Code.NOT_IN_ROOM, f"Join room '{room.name}' to {doing}.")

    def _info(self, record: FileRecord) -> f.FileInfo:
        return f.FileInfo(name=record.name, original=record.original, room=record.room, size=record.size,
                          sha256=record.sha256, uploader=record.uploader,
                          uploaded_at=as_datetime(record.created_at))

    # --- upload ---------------------------------------------------------------------------------

    async def handle_upload(self, call: Call, req: f.Upload) -> Reply:
        session = call.session
        cfg = self.config
        self._spawn(None)  # refuses at once if the service is not running
        room = self.chat.room(req.room)
        self._check_member(session, room, "upload files to it")
        if req.size > cfg.max_upload_bytes:
            raise ProtocolError(FileCode.FILE_TOO_LARGE,
                                f"File too large: {size(req.size)}; the limit is {size(cfg.max_upload_bytes)}.")
        mine = self.uploads.setdefault(session.id, {})
        if len(mine) >= cfg.max_uploads_per_session:
            raise ProtocolError(Code.LIMIT_REACHED, f"At most {cfg.max_uploads_per_session} uploads at once per "
                                                    "connection; finish one first.")
        if session.user is not None and session.transport != "admin":
            # Slots per user too: sixteen connections of one user must not take every slot of the server.
            users = sum(len(self.uploads.get(s.id, ())) for s in self.chat.sessions_of(session.user.name))
            if users >= cfg.max_uploads_per_user:
                raise ProtocolError(Code.LIMIT_REACHED, f"At most {cfg.max_uploads_per_user} uploads at once per "
                                                        "user; finish one first.")
        if self.uploads_in_progress >= cfg.max_uploads_total:
            raise ProtocolError(Code.LIMIT_REACHED, "The server is busy with other uploads; try again shortly.")
        pending = sum(u.size - u.received for per in self.uploads.values() for u in per.values())
        free = await trio.to_thread.run_sync(lambda: shutil.disk_usage(cfg.temp_dir).free, limiter=self.io)
        if free - pending - req.size < cfg.min_free_bytes:
            raise ProtocolError(FileCode.DISK_FULL, "Not enough disk space on the server for that file.")
        upload_id = "u" + secrets.token_hex(8)
        temp = cfg.temp_dir / f"{upload_id}.part"
        file = await trio.to_thread.run_sync(_create_exclusive, temp, limiter=self.io)
        send, receive = trio.open_memory_channel[list[bytes]](1)
        up = _Upload(id=upload_id, session=session, room=room, original=display_original(req.name), size=req.size,
                     sha256=req.sha256, uploader=self.who(session), temp=temp, send=send, receive=receive, file=file)
        mine[upload_id] = up
        self._spawn(self._writer, up)
        log.info("upload %s by %s into %s: %r, %d bytes", upload_id, up.uploader, room.name, up.original, req.size)
        return f.UploadReady(re=req.id, upload_id=upload_id, chunk_size=cfg.chunk_size)

    async def handle_chunk(self, call: Call, req: f.UploadChunk) -> Reply | None:
        session = call.session
        up = self.uploads.get(session.id, {}).get(req.upload_id)
        if up is None:
            return self._answer_unknown(session, req)
        # The lock keeps _abandon (disconnect, idle, room deleted) out while a chunk is being taken in. It
        # is almost never contended: take it without a trip through the scheduler when it is free.
        try:
            up.lock.acquire_nowait()
        except trio.WouldBlock:
            await up.lock.acquire()
        try:
            if up.over:
                return self._answer_unknown(session, req)
            up.last_activity = trio.current_time()
            try:
                final = await self._accept(up, req)
                if not final:
                    return p.Ok(re=req.id) if req.id is not None else None
                record = await self._store(up)
            except _Failed as failure:
                await self._fail(up, failure)
                return f.UploadFailed(re=req.id, upload_id=up.id, code=failure.code, message=failure.message)
            except BaseException:
                await self._fail(up, _Failed(Code.INTERNAL, "Upload abandoned."))
                raise
        finally:
            up.lock.release()
        return f.Uploaded(re=req.id, upload_id=up.id, name=record.name, original=record.original, room=record.room,
                          size=record.size, sha256=record.sha256)

    def _answer_unknown(self, session: Session, req: f.UploadChunk) -> Reply | None:
        """A chunk of an upload that is over, or never was. Answered once for an unknown id, and whenever
        it carries an ``id`` (so a client waiting on its final chunk hears why)."""
        tombs = self.tombstones.setdefault(session.id, OrderedDict())
        known = tombs.get(req.upload_id)
        if known is not None and req.id is None:
            return None
        code, message = known or (FileCode.NO_SUCH_UPLOAD, f"No upload '{req.upload_id}' in progress here.")
        if known is None:
            self._remember_failure(session, req.upload_id, code, message)
        return f.UploadFailed(re=req.id, upload_id=req.upload_id, code=code, message=message)

    def _remember_failure(self, session: Session, upload_id: str, code: str, message: str) -> None:
        tombs = self.tombstones.setdefault(session.id, OrderedDict())
        tombs[upload_id] = (code, message)
        while len(tombs) > 32:
            tombs.popitem(last=False)

    async def _accept(self, up: _Upload, req: f.UploadChunk) -> bool:
        """Take one chunk; True when it was the final one."""
        if req.offset != up.received:
            raise _Failed(FileCode.BAD_OFFSET, f"Chunk at offset {req.offset}; expected offset {up.received}.")
        try:
            data = f.decode_chunk(req.data)
        except ValueError:
            raise _Failed(FileCode.BAD_CHUNK, "Chunk data is not valid base64.") from None
        if len(data) > self.config.chunk_size:
            raise _Failed(FileCode.BAD_CHUNK, f"Chunk of {len(data)} bytes; at most {self.config.chunk_size}.")
        if up.received + len(data) > up.size:
            raise _Failed(FileCode.SIZE_MISMATCH, f"More data than the {up.size} bytes announced.")
        if data:
            up.parts.append(data)
            up.parted += len(data)
            up.received += len(data)
        final = up.received == up.size
        if up.parted >= self.config.write_batch_bytes or len(up.parts) >= _MAX_PARTS or (final and up.parts):
            batch = up.parts  # handed over as a list: joining would copy a megabyte on the event loop
            up.parts = []
            up.parted = 0
            # Waits while the writer is still busy with the batch before; if the writer stopped on an
            # error, that is reported just below.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await up.send.send(batch)
        if up.write_error is not None:
            raise self._write_failure(up.write_error)
        return final

    async def _writer(self, up: _Upload) -> None:
        """Hash and write an upload's batches in a worker thread, one at a time, in order."""
        try:
            async with up.receive:
                async for batch in up.receive:
                    if up.over or up.write_error is not None:
                        continue
                    try:
                        await trio.to_thread.run_sync(_write_batch, up, batch, limiter=self.io)
                    except OSError as exc:
                        up.write_error = exc
                        await up.receive.aclose()  # wake the handler if it is waiting to send
                        return
        finally:
            if up.file is not None:
                file, up.file = up.file, None
                with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                    await trio.to_thread.run_sync(file.close, limiter=self.io)
            up.writer_done.set()

    @staticmethod
    def _write_failure(exc: OSError) -> _Failed:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _Failed(FileCode.DISK_FULL, "The server ran out of disk space; the upload was not stored.")
        log.error("upload write failed: %s", exc)
        return _Failed(Code.STORAGE, "The server could not write the file; the upload was not stored.")

    async def _store(self, up: _Upload) -> FileRecord:
        """The last chunk is in: check, link into uploads/, commit the row, tell the room."""
        up.send.close()
        await up.writer_done.wait()
        if up.write_error is not None:
            raise self._write_failure(up.write_error)
        if up.written != up.size:  # cannot happen unless a write went missing; never store a short file
            raise _Failed(Code.STORAGE, "The server could not write the whole file; the upload was not stored.")
        digest = up.hasher.hexdigest()
        if digest != up.sha256:
            raise _Failed(FileCode.HASH_MISMATCH, "The data received does not match the SHA-256 announced; "
                                                  "the upload was not stored.")
        room = up.room
        if room.deleted or self.chat.room_here(room.key) is not room:
            raise _Failed(Code.NO_SUCH_ROOM, f"Room '{room.name}' was deleted; the upload was not stored.")
        # From here on the upload completes even if its connection drops: a file linked into uploads/
        # must get its row (or be removed), never be left half-way.
        with trio.CancelScope(shield=True):
            name, path = await self._link(up)  # leaves `name` in _linking
            try:
                try:
                    record = await self.chat.store.add_file(name=name, room_id=room.id, original=up.original,
                                                            size=up.size, sha256=digest, uploader=up.uploader)
                except StoreError as exc:  # Conflict included: the room may be gone, or the name taken
                    await self._unlink(path)
                    log.error("upload %s: could not commit the row of %s: %s", up.id, name, exc)
                    gone = isinstance(exc, Conflict) and room.deleted
                    raise _Failed(Code.NO_SUCH_ROOM if gone else Code.STORAGE,
                                  f"Room '{room.name}' was deleted; the upload was not stored." if gone
                                  else "The server could not record the file; the upload was not stored.") from None
            finally:
                self._linking.discard(name)
            up.over = True
            self._forget(up)
            try:
                await self.chat.record_and_wait(room, lambda seq: p.FileEvent(
                    room=room.name, seq=seq, user=up.uploader, action="upload", name=record.name,
                    original=record.original, size=record.size, sha256=record.sha256))
            except StoreError as exc:
                # The file is stored and listed; only its line in the history is missing.
                log.error("upload %s: stored %s but could not record the event: %s", up.id, name, exc)
        self.uploads_stored += 1
        log.info("upload %s stored as %s (%d bytes)", up.id, name, up.size)
        return record

    async def _link(self, up: _Upload) -> tuple[str, Path]:
        """Give the checked temp file its unique name in uploads/, never replacing an existing file."""
        for attempt in range(8):
            name = unique_name(up.room.name, datetime.now(UTC), up.original, f"{up.sha256}:{up.id}:{attempt}")
            path = self.path_of(name)
            self._linking.add(name)  # before the file appears: see _sweep_orphans
            try:
                await trio.to_thread.run_sync(_link_no_replace, up.temp, path, limiter=self.io)
                return name, path
            except FileExistsError:
                self._linking.discard(name)
                continue
            except OSError as exc:
                self._linking.discard(name)
                raise self._write_failure(exc) from None
        raise _Failed(Code.STORAGE, "The server could not name the file; the upload was not stored.")

    async def _unlink(self, path: Path) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove, limiter=self.io)

    def _forget(self, up: _Upload) -> None:
        mine = self.uploads.get(up.session.id)
        if mine is not None:
            mine.pop(up.id, None)

    async def _fail(self, up: _Upload, failure: _Failed) -> None:
        """End an upload that went wrong: nothing of it is kept."""
        with trio.CancelScope(shield=True):
            up.over = True
            self._forget(up)
            self._remember_failure(up.session, up.id, failure.code, failure.message)
            up.parts = []
            up.send.close()
            await up.writer_done.wait()
            await self._unlink(up.temp)
        self.uploads_failed += 1
        log.info("upload %s by %s failed: %s", up.id, up.uploader, failure.message)

    async def _abandon(self, up: _Upload, failure: _Failed, *, notify: bool) -> None:
        """End an upload from outside its session's requests (disconnect, idle, room deleted)."""
        with trio.CancelScope(shield=True):
            async with up.lock:
                if up.over:
                    return
                await self._fail(up, failure)
        if notify:
            up.session.peer.send(f.UploadFailed(upload_id=up.id, code=failure.code, message=failure.message))

    # --- download -------------------------------------------------------------------------------

    async def handle_download(self, call: Call, req: f.Download) -> None:
        session = call.session
        cfg = self.config
        mine = self.downloads.setdefault(session.id, {})
        if len(mine) >= cfg.max_downloads_per_session:
            raise ProtocolError(Code.LIMIT_REACHED, f"At most {cfg.max_downloads_per_session} downloads at once per "
                                                    "connection.")
        if self.downloads_in_progress >= cfg.max_downloads_total:
            raise ProtocolError(Code.LIMIT_REACHED, "The server is busy with other downloads; try again shortly.")
        if not is_unique_name(req.name):
            raise ProtocolError(FileCode.NO_SUCH_FILE, "No such file: not a valid file name.")
        path = self.path_of(req.name)
        record = await self.chat.store.get_file(req.name)
        room = self.chat.room_here(record.room) if record is not None else None
        if record is None or room is None:
            raise ProtocolError(FileCode.NO_SUCH_FILE, f"No such file: '{req.name}'.")
        self._check_member(session, room, "download its files")
        try:
            file = await trio.to_thread.run_sync(_open_for_download, path, record.size, limiter=self.io)
        except OSError as exc:
            log.error("download of %s: %s", record.name, exc)
            raise ProtocolError(FileCode.NO_SUCH_FILE, f"File '{record.name}' is missing on the server.") from None
        download = _Download("d" + secrets.token_hex(8), session, room.key)
        mine[download.id] = download
        # The start goes out before the task that sends the chunks is even scheduled.
        session.peer.send(f.DownloadStart(re=req.id, download_id=download.id, name=record.name,
                                          original=record.original, room=record.room, size=record.size,
                                          sha256=record.sha256, chunk_size=cfg.chunk_size), req)
        try:
            self._spawn(self._stream, download, record, room, file)
        except BaseException:
            mine.pop(download.id, None)
            file.close()
            raise
        return None

    async def _stream(self, download: _Download, record: FileRecord, room: Room, file: BinaryIO) -> None:
        session, peer, cfg = download.session, download.session.peer, self.config
        chunk = cfg.chunk_size
        block = max(1, cfg.read_block_bytes // chunk) * chunk
        finished = False
        try:
            with download.scope:
                try:
                    offset = 0
                    while offset < record.size:
                        want = min(block, record.size - offset)
                        # Room in the send queue for the block's chunks before reading it (base64: 4/3).
                        await peer.reserve(want * 4 // 3 + 1024)
                        pieces = await trio.to_thread.run_sync(_read_block, file, want, chunk, limiter=self.io)
                        if not pieces:
                            raise OSError(errno.EIO, "file shorter than recorded")
                        for data, length in pieces:
                            # Built without validation: every field is ours and already of the right type.
                            await peer.send_paced(f.DownloadChunk.model_construct(
                                type="download_chunk", re=None, download_id=download.id, offset=offset, data=data))
                            offset += length
                    await peer.send_paced(f.DownloadEnd(download_id=download.id, name=record.name, size=offset))
                    finished = True
                except OSError as exc:
                    log.error("download %s of %s failed: %s", download.id, record.name, exc)
                    peer.send(f.DownloadFailed(download_id=download.id, code=Code.STORAGE,
                                               message="The server could not read the file."))
            if download.stopped is not None and not finished:
                peer.send(f.DownloadFailed(download_id=download.id, code=download.stopped.code,
                                           message=download.stopped.message))
        finally:
            mine = self.downloads.get(session.id)
            if mine is not None:
                mine.pop(download.id, None)
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await trio.to_thread.run_sync(file.close, limiter=self.io)
        if finished:
            # A download is no room event: the room is not told, nor its history filled, each time
            # someone reads a file. The server's log keeps it.
            self.downloads_done += 1
            log.info("%s downloaded %s from %s", self.who(session), record.name, room.name)

    # --- list -----------------------------------------------------------------------------------

    async def handle_list(self, call: Call, req: f.ListFiles) -> Reply:
        session = call.session
        room = self.chat.room(req.room) if req.room else self.chat.my_room(session, None)
        self._check_member(session, room, "list its files")
        records = await self.chat.store.list_files(room.id)
        limit = self.config.max_list_files
        return f.FileList(re=req.id, room=room.name, files=[self._info(r) for r in records[-limit:]],
                          more=len(records) > limit)


# --- blocking helpers (worker threads) ------------------------------------------------------------


def _create_exclusive(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    return os.fdopen(fd, "wb", buffering=0)


def _write_batch(up: _Upload, parts: list[bytes]) -> None:
    """Hash and append one batch of chunks (one ``writev``); hashlib and the write release the GIL."""
    for part in parts:
        up.hasher.update(part)
    assert up.file is not None
    fd = up.file.fileno()
    total = sum(map(len, parts))
    done = os.writev(fd, parts)
    if done < total:  # a short write (rare): finish piece by piece
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            n = os.write(fd, rest)
            if not n:
                raise OSError(errno.EIO, "short write")
            rest = rest[n:]
    up.written += total


def _link_no_replace(temp: Path, dest: Path) -> None:
    try:
        os.link(temp, dest)  # fails with FileExistsError rather than replacing
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: create the name exclusively, then rename over it.
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(temp, dest)
        return
    os.unlink(temp)


def _open_for_download(path: Path, size: int) -> BinaryIO:
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the download task
    try:
        actual = os.fstat(file.fileno()).st_size
        if actual != size:
            raise OSError(errno.EIO, f"{path.name} has {actual} bytes; {size} recorded")
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except BaseException:
        file.close()
        raise
    return file


def _read_block(file: BinaryIO, block: int, chunk: int) -> list[tuple[str, int]]:
    """Read up to ``block`` bytes; return them as (base64, raw length) pieces of ``chunk`` raw bytes."""
    data = file.read(block)
    if not data:
        return []
    view = memoryview(data)
    return [(f.encode_chunk(view[i:i + chunk]), len(view[i:i + chunk])) for i in range(0, len(data), chunk)]


# --- installation ---------------------------------------------------------------------------------


class DailyVolume:
    """The bytes each user may upload per day: an upload that would go over is refused before it starts
    (counting the user's uploads in progress), and a finished one is charged."""

    def __init__(self, service: FileService) -> None:
        self.service = service
        self.quota = service.chat.limits.uploads

    def check(self, call: Call, request: Any) -> None:
        user = call.session.user
        if user is not None and isinstance(request, f.Upload):
            self.quota.check(user.key, charged(request.size), self.service.in_progress(user.key))

    def charge(self, call: Call, request: Any, reply: Reply | None) -> None:
        user = call.session.user
        if user is not None and isinstance(reply, f.Uploaded):
            self.quota.add(user.key, charged(reply.size))


def install(chat: Chat, config: FileConfig) -> FileService:
    """Register file sharing on ``chat``; run the returned service's :meth:`FileService.run` in a nursery."""
    service = FileService(chat, config)
    volume = DailyVolume(service)
    chat.register([
        # Every file posts an event to the room: it costs what a message costs.
        Command(f.Upload, service.handle_upload, rate=messages, quota=volume),
        Command(f.UploadChunk, service.handle_chunk, quota=volume),
        Command(f.Download, service.handle_download),
        Command(f.ListFiles, service.handle_list),
    ])
    chat.when_disconnected(service.on_disconnect)
    chat.when_room_deleted(service.on_room_deleted)
    return service


__all__ = ["FileConfig", "FileService", "display_original", "install", "is_unique_name",
                          "safe_component", "unique_name"]
