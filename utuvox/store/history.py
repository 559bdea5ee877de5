"""The room history reads every engine answers with one query: pages by ``history_range``."""

from __future__ import annotations

from .interface import StoredEvent


class PagedHistory:
    async def history_range(self, room_id: int, *, after: int | None, before: int | None, limit: int,
                            latest: bool) -> list[StoredEvent]:
        raise NotImplementedError

    async def history(self, room_id: int, *, before: int | None, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with ``seq < before`` (or the latest), oldest first."""
        return await self.history_range(room_id, after=None, before=before, limit=limit, latest=True)

    async def events_after(self, room_id: int, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with ``seq > after``, oldest first."""
        return await self.history_range(room_id, after=after, before=None, limit=limit, latest=False)
