"""File transfer for the client: upload a local file to a room, download a shared file to a directory.

The wire protocol is in :mod:`utuvox.protocol.files`. What this side promises:

- an upload streams chunks back to back with a bounded number unacknowledged, and returns the server's
  ``uploaded`` reply (the file's unique name) or raises :class:`UtuVoxError`;
- a download writes into a temporary file in the target directory, checks size and SHA-256, and only
  then gives the file its name; it never overwrites a file (``report.pdf`` becomes ``report (1).pdf``),
  and no name the server sends (``/``, ``..``, NUL, control characters) can place it anywhere but in
  the target directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from utuvox.protocol import Reply
from utuvox.protocol import core as p
from utuvox.protocol import files as f

from .errors import BAD_FRAME, TRANSFER_FAILED, UtuVoxError
from .link import Link, Pending

# The client's link once it is connected (after a reconnection, the new one).
ReadyLink = Callable[[], Awaitable[Link]]

Progress = Callable[[int, int], None]

# Chunks sent before waiting for the oldest one's acknowledgement: enough to keep the pipe full, few
# enough that a failure is noticed early and the server's queue stays short.
WINDOW = 8
NAME_MAX_BYTES = 200
_UNSAFE = set('/\\:*?"<>|')


def _error(reply: Reply) -> UtuVoxError:
    if isinstance(reply, p.Error | f.UploadFailed | f.DownloadFailed):
        return UtuVoxError(reply.code, reply.message, re=reply.re)
    return UtuVoxError(BAD_FRAME, f"Unexpected '{reply.type}' during a file transfer.")


def _sha256_of(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


async def upload(connected: ReadyLink, room: str, path: Path, progress: Progress | None = None) -> f.Uploaded:
    """Send the file at ``path`` to ``room``. Returns the ``uploaded`` reply (``.name`` is the unique name
    others download it by). The file is read twice (once to hash it), never held whole in memory."""
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    size, sha256 = await trio.to_thread.run_sync(_sha256_of, path)
    original = (path.name or "file")[: f.ORIGINAL_NAME_MAX]
    link = await connected()
    ready = await link.call(f.Upload(room=room, name=original, size=size, sha256=sha256))
    if not isinstance(ready, f.UploadReady):
        raise _error(ready)
    sender = _ChunkSender(link, ready, size, progress)
    try:
        return await sender.send_file(path)
    except BaseException:
        if not sender.over and not link.closed.is_set():
            await _abandon(link, ready.upload_id)
        raise


class _ChunkSender:
    """Streams one upload's chunks, at most ``WINDOW`` of them unacknowledged."""

    def __init__(self, link: Link, ready: f.UploadReady, size: int, progress: Progress | None) -> None:
        self.link = link
        self.ready = ready
        self.size = size
        self.progress = progress
        self.acked = 0
        self.over = False  # the server has ended this upload (stored it, or refused it)
        self._in_flight: deque[tuple[Pending, int]] = deque()

    async def send_file(self, path: Path) -> f.Uploaded:
        if self.progress is not None:
            self.progress(0, self.size)
        async with await trio.open_file(path, "rb") as src:
            offset = 0
            while True:
                data = await src.read(self.ready.chunk_size)
                if offset + len(data) > self.size:
                    raise UtuVoxError(TRANSFER_FAILED, f"{path} grew while it was being sent.")
                final = offset + len(data) >= self.size
                if not data and not final:
                    raise UtuVoxError(TRANSFER_FAILED, f"{path} shrank while it was being sent.")
                chunk = f.UploadChunk(upload_id=self.ready.upload_id, offset=offset, data=f.encode_chunk(data))
                self._in_flight.append((await self.link.send(chunk), len(data)))
                offset += len(data)
                if final:
                    break
                if len(self._in_flight) >= WINDOW:
                    await self._acknowledged()
        while len(self._in_flight) > 1:
            await self._acknowledged()
        pending, _ = self._in_flight.popleft()
        done = await self.link.wait(pending)
        self.over = True
        if not isinstance(done, f.Uploaded):
            raise _error(done)
        if self.progress is not None:
            self.progress(self.size, self.size)
        return done

    async def _acknowledged(self) -> None:
        pending, length = self._in_flight.popleft()
        reply = await self.link.wait(pending)
        if not isinstance(reply, p.Ok):
            self.over = True
            raise _error(reply)
        self.acked += length
        if self.progress is not None:
            self.progress(self.acked, self.size)


async def _abandon(link: Link, upload_id: str) -> None:
    """Make the server drop an upload given up halfway (cancelled, or the file changed): a chunk at an
    impossible offset ends it at once, and frees what it holds. Its answer is not awaited."""
    with trio.move_on_after(2, shield=True):
        with contextlib.suppress(UtuVoxError):
            await link.send(f.UploadChunk(upload_id=upload_id, offset=2**53, data=""), track=False)


# --- download -----------------------------------------------------------------------------------


def safe_file_name(name: str, fallback: str = "download") -> str:
    """A name that is one plain file name in any directory: no separators, no ``..``, no NUL or other
    control or format characters, no leading dot (hidden files), at most 200 bytes of UTF-8."""
    out = []
    for ch in unicodedata.normalize("NFC", name):
        if ch in _UNSAFE or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append("_")
        else:
            out.append(ch)
    cleaned = "".join(out).strip().lstrip(".").strip()
    if not cleaned or set(cleaned) <= {"_", "."}:
        cleaned = fallback
    while len(cleaned.encode("utf-8")) > NAME_MAX_BYTES:
        cleaned = cleaned[:-1]
    return cleaned


def _candidates(name: str) -> Any:
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension, or only a leading one
        stem, dot, ext = name, "", ""
    yield name
    for n in range(1, 10_000):
        yield f"{stem} ({n}){dot}{ext}"
    yield f"{stem} ({secrets.token_hex(4)}){dot}{ext}"


def _claim(tmp: Path, directory: Path, name: str) -> Path:
    """Give the checked temporary file its final name without ever replacing an existing file.

    A hard link fails if the name exists, atomically, so a file created meanwhile by someone else is
    never clobbered; where hard links are not possible, an exclusive create reserves the name first.
    """
    # The temporary file was private while incomplete; the finished one gets ordinary permissions.
    os.chmod(tmp, 0o644)
    for candidate in _candidates(name):
        target = directory / candidate
        if target.resolve().parent != directory.resolve():
            raise UtuVoxError(TRANSFER_FAILED, "Refusing a file name that leads outside the download directory.")
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        except OSError:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            os.replace(tmp, target)
            return target
        tmp.unlink()
        return target
    raise UtuVoxError(TRANSFER_FAILED, f"No free name for {name} in {directory}.")


def _open_temp(directory: Path, name: str) -> tuple[Path, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name[:60]}.{secrets.token_hex(6)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return tmp, os.fdopen(fd, "wb")


async def download(connected: ReadyLink, name: str, directory: Path, progress: Progress | None = None) -> Path:
    """Fetch the file ``name`` (its unique name) into ``directory``; return the path written."""
    link = await connected()
    chunks_in, chunks_out = trio.open_memory_channel[Any](math.inf)

    def on_reply(reply: Reply) -> None:
        # Runs in the reader as download_start arrives, so the chunks right behind it find their route.
        if isinstance(reply, f.DownloadStart):
            link.routes[reply.download_id] = chunks_in

    start = await link.call(f.Download(name=name), on_reply=on_reply)
    if not isinstance(start, f.DownloadStart):
        raise _error(start)
    finished = False
    try:
        target_name = safe_file_name(start.original, fallback=safe_file_name(start.name))
        tmp, out = await trio.to_thread.run_sync(_open_temp, directory, target_name)
        try:
            digest = hashlib.sha256()
            received = 0
            if progress is not None:
                progress(0, start.size)
            with out:
                async for frame in chunks_out:
                    if isinstance(frame, f.DownloadChunk):
                        if frame.offset != received:
                            raise UtuVoxError(TRANSFER_FAILED, f"Chunk at {frame.offset}, expected {received}.")
                        try:
                            data = f.decode_chunk(frame.data)
                        except ValueError:
                            raise UtuVoxError(TRANSFER_FAILED, "The server sent a chunk that is not base64.") from None
                        received += len(data)
                        if received > start.size:
                            raise UtuVoxError(TRANSFER_FAILED, "The server sent more bytes than announced.")
                        digest.update(data)
                        await trio.to_thread.run_sync(out.write, data)
                        if progress is not None:
                            progress(received, start.size)
                    elif isinstance(frame, f.DownloadEnd):
                        finished = True
                        break
                    else:
                        finished = True
                        raise _error(frame)
                else:
                    raise UtuVoxError(TRANSFER_FAILED, f"Connection lost during the download: {link.reason}")
                await trio.to_thread.run_sync(out.flush)
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            if received != start.size or digest.hexdigest() != start.sha256.lower():
                raise UtuVoxError(TRANSFER_FAILED, "The file received does not match its size and SHA-256.")
            return await trio.to_thread.run_sync(_claim, tmp, directory, target_name)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await trio.to_thread.run_sync(tmp.unlink, True)
    finally:
        link.routes.pop(start.download_id, None)
        chunks_in.close()
        if not finished:
            link.drop_download(start.download_id)  # the server keeps sending: drop the rest
