"""File sharing frames: upload a file into a room in chunks, download it by its unique name, list a room's files.

The whole exchange is ordinary frames of the one schema, the same over TCP (JSON lines) and WebSocket.
File bytes travel base64-encoded in ``data`` fields, in chunks small enough for the frame limit
(``chunk_size`` raw bytes, which the server announces; see :func:`chunk_size_for_frame`).

Upload::

    -> {"type": "upload", "id": 1, "room": "general", "name": "report.pdf", "size": 70000, "sha256": "<hex>"}
    <- {"type": "upload_ready", "re": 1, "upload_id": "u-...", "chunk_size": 46080}
    -> {"type": "upload_chunk", "upload_id": "u-...", "offset": 0, "data": "<base64>"}
    -> {"type": "upload_chunk", "upload_id": "u-...", "offset": 46080, "data": "<base64>", "id": 2}
    <- {"type": "uploaded", "re": 2, "upload_id": "u-...", "name": "general_20250101_120000_report.pdf_1a2b3c4d", ...}

- Chunks are sent back to back without waiting; their offsets must follow each other exactly.
- The *final* chunk is the one whose end reaches ``size`` (an empty file is sent as one chunk with
  ``offset`` 0 and empty ``data``). Give it an ``id``: the server checks size and SHA-256, stores the
  file and answers that chunk with ``uploaded`` (the file is in the room, and the room has seen a ``file``
  event) or ``upload_failed``. Either way the upload is over.
- An earlier chunk that carries an ``id`` is answered ``ok`` (an acknowledgement a client may use to
  bound how far it runs ahead); earlier chunks without ``id`` are not answered unless they fail.
- If the upload fails before its final chunk (bad offset, too much data, bad base64, disk full...), the
  server sends ``upload_failed`` at once (``re`` = that chunk's ``id``, if any), deletes what it had
  received, and ignores the rest of that upload's chunks, except that one carrying an ``id`` is answered
  ``upload_failed`` again so a client waiting on its final chunk always gets an answer.
- An ``upload`` that is refused outright (not a member, too large, too many uploads in progress) is
  answered ``error`` with the ``upload`` request's ``re``; no ``upload_id`` is issued.
- An upload still in progress when its connection closes is abandoned; nothing of it is kept.

Download::

    -> {"type": "download", "id": 3, "name": "general_20250101_120000_report.pdf_1a2b3c4d"}
    <- {"type": "download_start", "re": 3, "download_id": "d-...", "name": "...", "size": 70000, ...}
    <- {"type": "download_chunk", "download_id": "d-...", "offset": 0, "data": "<base64>"}
    <- {"type": "download_chunk", "download_id": "d-...", "offset": 46080, "data": "<base64>"}
    <- {"type": "download_end", "download_id": "d-...", "name": "...", "size": 70000}

- An empty file has no ``download_chunk``. A download that fails after ``download_start`` ends with
  ``download_failed`` instead of ``download_end``. A refused ``download`` is answered ``error``.
- Other frames (room messages...) may be interleaved with the chunks; route chunks by ``download_id``.

Names of this module (models, type strings, fields and :class:`FileCode`) are public API.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from .base import Reply, Request, RequestId
from .names import Name


class _Base64(Protocol):
    """What chunks need of a base64 module: pybase64 and the standard library's both have it."""

    def b64encode(self, s: bytes | memoryview, /) -> bytes: ...

    def b64decode(self, s: str, /, *, validate: bool) -> bytes: ...


def _base64() -> _Base64:
    try:  # SIMD base64, 20-40x faster than the standard library's; the same results either way
        import pybase64
    except ImportError:  # pragma: no cover - pybase64 is a dependency, but the protocol works without it
        import base64

        return base64
    return pybase64


_b64 = _base64()

# --- limits and helpers -------------------------------------------------------------------------

ORIGINAL_NAME_MAX = 255
"""Longest original file name a client may announce (characters)."""

FILE_NAME_MAX = 512
"""Longest unique name accepted in a ``download`` request."""

FRAME_OVERHEAD = 256
"""Bytes reserved in a chunk frame for everything but ``data`` (type, ids, offset, quotes, newline)."""

SHA256_HEX_LEN = 64


def chunk_size_for_frame(max_frame_bytes: int) -> int:
    """The largest raw chunk (a multiple of 3 KiB, so base64 has no padding mid-file) whose frame fits
    ``max_frame_bytes``. 64 KiB frames give 45 KiB chunks (61,440 base64 characters)."""
    blocks = (max_frame_bytes - FRAME_OVERHEAD) // 4096  # 3072 raw bytes -> 4096 base64 characters
    return max(1, blocks) * 3072


def encode_chunk(data: bytes | memoryview) -> str:
    """Raw bytes -> the ``data`` field of a chunk frame."""
    return _b64.b64encode(data).decode("ascii")


def decode_chunk(data: str) -> bytes:
    """The ``data`` field of a chunk frame -> raw bytes. Raises ``ValueError`` if it is not base64."""
    try:
        return _b64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("chunk data is not valid base64") from exc


def _lower(value: str) -> str:
    return value.lower()


Sha256Hex = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(_lower)
]
"""A SHA-256 digest as 64 hex digits (either case on the way in; always lower case on the way out)."""

TransferId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
OriginalName = Annotated[str, StringConstraints(min_length=1, max_length=ORIGINAL_NAME_MAX)]
FileName = Annotated[str, StringConstraints(min_length=1, max_length=FILE_NAME_MAX)]
FileSize = Annotated[int, Field(ge=0, le=2**53)]


class FileCode(StrEnum):
    """Error codes of file sharing, on top of :class:`~utuvox.protocol.errors.Code` (``forbidden``,
    ``not_in_room``, ``no_such_room``, ``limit_reached``, ``not_supported``, ``storage_error``...)."""

    NO_SUCH_FILE = "no_such_file"  # no file by that name (or the name is not a valid unique name)
    NO_SUCH_UPLOAD = "no_such_upload"  # the upload_id is unknown to this session (or already finished)
    FILE_TOO_LARGE = "file_too_large"  # the announced size is over the server's limit
    BAD_OFFSET = "bad_offset"  # a chunk does not start where the previous one ended
    SIZE_MISMATCH = "size_mismatch"  # more data than announced
    HASH_MISMATCH = "hash_mismatch"  # the bytes received do not have the announced SHA-256
    BAD_CHUNK = "bad_chunk"  # chunk data that is not base64, or a chunk over chunk_size
    DISK_FULL = "disk_full"  # the server ran out of space


# --- requests -----------------------------------------------------------------------------------


class Upload(Request):
    """Announce a file to send to a room you are in. ``name`` is the file's own name (a bare name like
    ``report.pdf``; anything unsafe in it is replaced in the stored name). Answered ``upload_ready``."""

    type: Literal["upload"] = "upload"
    room: Name
    name: OriginalName
    size: FileSize
    sha256: Sha256Hex


class UploadChunk(Request):
    """``data`` (base64 of at most ``chunk_size`` raw bytes) at byte ``offset`` of upload ``upload_id``."""

    type: Literal["upload_chunk"] = "upload_chunk"
    upload_id: TransferId
    offset: FileSize
    data: str


class Download(Request):
    """Fetch a file by its unique name. Answered by ``download_start``, chunks and ``download_end``."""

    type: Literal["download"] = "download"
    name: FileName


class ListFiles(Request):
    """The files of a room (default: the current room). Answered ``file_list``."""

    type: Literal["list_files"] = "list_files"
    room: Name | None = None


# --- replies ------------------------------------------------------------------------------------


class FileInfo(BaseModel):
    """One stored file."""

    model_config = ConfigDict(frozen=True)

    name: str  # the unique name, what ``download`` takes
    original: str  # the name announced, reduced to its last path component, control characters replaced
    room: str
    size: int
    sha256: str
    uploader: str
    uploaded_at: datetime


class UploadReady(Reply):
    """The server accepts the upload: send chunks of at most ``chunk_size`` raw bytes for ``upload_id``."""

    type: Literal["upload_ready"] = "upload_ready"
    upload_id: str
    chunk_size: int


class Uploaded(Reply):
    """The upload is complete, checked and stored. ``re`` is the ``id`` of its final chunk."""

    type: Literal["uploaded"] = "uploaded"
    upload_id: str
    name: str  # the unique name, what ``download`` takes
    original: str
    room: str
    size: int
    sha256: str


class UploadFailed(Reply):
    """The upload ``upload_id`` is over and nothing of it was kept. ``re`` is the ``id`` of the chunk
    that ended it, if it had one."""

    type: Literal["upload_failed"] = "upload_failed"
    upload_id: str
    code: str
    message: str


class DownloadStart(Reply):
    """A download begins: ``size`` bytes follow in ``download_chunk`` frames of at most ``chunk_size``."""

    type: Literal["download_start"] = "download_start"
    download_id: str
    name: str
    original: str
    room: str
    size: int
    sha256: str
    chunk_size: int


class DownloadChunk(Reply):
    type: Literal["download_chunk"] = "download_chunk"
    download_id: str
    offset: int
    data: str


class DownloadEnd(Reply):
    """Every byte of the download has been sent; check ``size`` and the ``sha256`` of ``download_start``."""

    type: Literal["download_end"] = "download_end"
    download_id: str
    name: str
    size: int


class DownloadFailed(Reply):
    """The download stopped after ``download_start``; discard what was received."""

    type: Literal["download_failed"] = "download_failed"
    download_id: str
    code: str
    message: str


class FileList(Reply):
    """The files of ``room``, oldest first. ``more`` is true when older files were left out (a list holds
    at most the server's ``max_list_files`` newest)."""

    type: Literal["file_list"] = "file_list"
    room: str
    files: list[FileInfo]
    more: bool = False


REQUESTS: list[type[Request]] = [Upload, UploadChunk, Download, ListFiles]
REPLIES: list[type[Reply]] = [
    UploadReady, Uploaded, UploadFailed, DownloadStart, DownloadChunk, DownloadEnd, DownloadFailed, FileList,
]  # fmt: skip

__all__ = [
    "FILE_NAME_MAX", "ORIGINAL_NAME_MAX", "REPLIES", "REQUESTS", "Download", "DownloadChunk", "DownloadEnd",
    "DownloadFailed", "DownloadStart", "FileCode", "FileInfo", "FileList", "ListFiles", "RequestId",
    "Upload", "UploadChunk", "UploadFailed", "UploadReady", "Uploaded", "chunk_size_for_frame",
    "decode_chunk", "encode_chunk",
]  # fmt: skip
