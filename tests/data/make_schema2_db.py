"""Writes ``schema2.db``: a small SQLite database as UtuVox wrote it at schema version 2, before stored
events carried a version of their own. The tests open it with today's store to check that migrations keep
every row and that the events read back still validate. Run from the repository root with the code of
that schema version checked out: ``python tests/data/make_schema2_db.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from utuvox.protocol import core as p
from utuvox.protocol import json_codec
from utuvox.store import SqliteStore, StoredEvent

HERE = Path(__file__).parent
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def main(path: Path) -> None:
    path.unlink(missing_ok=True)
    store = await SqliteStore.open(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.create_user("Alice", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", is_admin=True, is_bot=False)
        await store.create_user("bob", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", is_admin=False, is_bot=True)
        await store.update_user("bob", banned=True, ban_reason="spam")
        room = await store.create_room("General", "Alice")
        await store.create_room("quiet", None)
        await store.set_topic(room.id, "welcome", "Alice", START.timestamp())
        events: list[p.MessageEvent | p.JoinEvent | p.LeaveEvent | p.FileEvent] = [
            p.JoinEvent(ts=START, room="General", seq=0, user="Alice"),
            p.MessageEvent(ts=START + timedelta(seconds=1), room="General", seq=0, user="Alice", text="hello"),
            p.MessageEvent(ts=START + timedelta(seconds=2), room="General", seq=0, user="Alice", text="waves",
                           action=True),
            p.FileEvent(ts=START + timedelta(seconds=3), room="General", seq=0, user="Alice", name="a1-notes.txt",
                        original="notes.txt", size=5, sha256="5" * 64),
            p.LeaveEvent(ts=START + timedelta(seconds=4), room="General", seq=0, user="Alice", reason="bye"),
        ]
        done = trio.Event()
        seqs: list[int] = []

        def committed(seq: int, error: BaseException | None) -> None:
            assert error is None, error
            seqs.append(seq)
            if len(seqs) == len(events):
                done.set()

        for event in events:
            body = json_codec.encode(event)[:-1].decode()
            store.submit_event(StoredEvent(room.id, 0, event.ts.timestamp(), event.type, event.user, body), committed)
        await done.wait()
        await store.add_file(name="a1-notes.txt", room_id=room.id, original="notes.txt", size=5, sha256="5" * 64,
                             uploader="Alice")
        for i, (sender, recipient) in enumerate([("Alice", "bob"), ("bob", "Alice")]):
            ts = START + timedelta(seconds=10 + i)
            message = p.PrivateMessage(ts=ts, user=sender, to=recipient, text=f"psst {i}")
            await store.add_private(ts=ts.timestamp(), sender=sender, recipient=recipient,
                                    body=message.model_dump_json(exclude_none=True))
        await store.add_admin_log(actor="Alice", via="console", action="ban_user", target="bob", outcome="ok",
                                  detail="spam")
        nursery.cancel_scope.cancel()
    await store.close()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


if __name__ == "__main__":
    trio.run(main, HERE / "schema2.db")
