"""Archiver: keeps a transcript of its rooms in daily files, with no hole across restarts.

    UTUVOX_BOT_PASSWORD=... python -m bots.archiver --user archiver --register --room general --dir archive

Each room gets ``DIR/<room>/<YYYY-MM-DD>.log`` (UTC days), one line per message, join, leave and file,
worded as in text mode. ``DIR/state.json`` holds the last sequence number written per room; on start
the archiver rejoins with ``since=`` that number, so the SDK first yields everything said while it was
away (from history), then the live events. The first run of a room archives its history from the start.

A line is written before its number is saved, so a crash between the two can repeat that one line on
the next start; it can never lose one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from utuvox.client import Client
from utuvox.protocol import text_codec
from utuvox.protocol.core import FileEvent, JoinEvent, LeaveEvent, MessageEvent

from . import runner

log = logging.getLogger("bots.archiver")

ARCHIVED = (MessageEvent, JoinEvent, LeaveEvent, FileEvent)


class Archive:
    """The transcript files and the state file of one archive directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state_path = directory / "state.json"
        self.last: dict[str, int] = {}

    def load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        self.last = {str(k): int(v) for k, v in data.get("last_seq", {}).items()}

    def path_for(self, event: Any) -> Path:
        # Room names are ASCII letters, digits, '_', '-' and '.', starting with a letter or digit:
        # safe as a directory name as they are.
        return self.directory / event.room.lower() / f"{event.ts.strftime('%Y-%m-%d')}.log"

    def write(self, event: Any) -> bool:
        """Append the event's line and remember its number; ``False`` if it was written before."""
        key = event.room.lower()
        if event.seq <= self.last.get(key, 0):
            return False
        path = self.path_for(event)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = text_codec.render(event, current_room=event.room)
        with path.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())
        self.last[key] = event.seq
        self._save()
        return True

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_seq": self.last}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_path)


async def handle(client: Client, args: argparse.Namespace) -> None:
    archive: Archive = args.archive
    for room in args.rooms:
        # since=0 on a room's first run: its whole history goes into the transcript.
        await runner.enter(client, room, since=archive.last.get(room.lower(), 0))
    log.info("archiving %s into %s", ", ".join(client.rooms), archive.directory)
    async for event in client:
        if isinstance(event, ARCHIVED):
            await trio.to_thread.run_sync(archive.write, event)


def build_parser() -> argparse.ArgumentParser:
    p = runner.parser("python -m bots.archiver", "Keep daily transcripts of the bot's rooms.")
    p.add_argument("--dir", type=Path, default=Path("archive"), help="where transcripts go (default ./archive)")
    return p


def prepare(args: argparse.Namespace) -> argparse.Namespace:
    """Load the archive's state before connecting (so a broken state file stops the bot at once)."""
    args.archive = Archive(args.dir)
    args.archive.load()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = prepare(runner.parse(build_parser(), argv))
    return runner.main(args, handle, join=False)


if __name__ == "__main__":
    sys.exit(main())
