"""Tables for the console's listings, built from the protocol's reply models. All times are UTC, as
everywhere else in UtuVox; every string from the server is cleaned of control characters and shown
as plain text (never as Rich markup)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.box import SIMPLE_HEAD
from rich.table import Table
from rich.text import Text

from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.protocol.safe_text import clean
from utuvox.protocol.units import byte_size, duration


def when(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def yes(flag: bool) -> str:
    return "yes" if flag else ""


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, title: str | None = None) -> Table:
    out = Table(*headers, box=SIMPLE_HEAD, show_edge=False, title=title, title_justify="left")
    for row in rows:
        out.add_row(*(Text(clean("" if cell is None else str(cell))) for cell in row))
    return out


def users(reply: a.UserTable) -> Table:
    return table(
        ["User", "Admin", "Bot", "Banned", "Ban reason", "Online", "Created (UTC)"],
        ([u.name, yes(u.is_admin), yes(u.is_bot), yes(u.banned), u.ban_reason, u.sessions or "", when(u.created_at)]
         for u in reply.users),
    )


def rooms(reply: p.RoomList) -> Table:
    return table(["Room", "Members"], ([r.name, r.members] for r in reply.rooms))


def sessions(reply: a.SessionList, now: datetime | None = None) -> Table:
    now = now or datetime.now(UTC)

    def who(s: a.SessionInfo) -> str:
        if s.user:
            return s.user + (" (admin)" if s.is_admin else "")
        return f"console:{s.operator}" if s.operator else "(not logged in)"

    out = table(
        ["ID", "User", "Transport", "Address", "Node", "Rooms", "Connected since (UTC)", "For"],
        ([s.id, who(s), s.transport + (" tail" if s.tailing else ""), s.address, s.node or "", ", ".join(s.rooms),
          when(s.connected_at), duration((now - s.connected_at).total_seconds())] for s in reply.sessions),
    )
    # An address cut short loses its port, the part an operator looks for: the other columns fold instead.
    address = out.columns[3]
    address.no_wrap = True
    address.min_width = max((len(clean(s.address)) for s in reply.sessions), default=7)
    return out


def _event_row(event: Any) -> list[Any]:
    if isinstance(event, p.MessageEvent):
        return [event.seq, when(event.ts), "message", event.user, event.text]
    if isinstance(event, p.FileEvent):
        return [event.seq, when(event.ts), event.action, event.user,
                f"{event.name} (original: {event.original}, {byte_size(event.size)})"]
    return [event.seq, when(event.ts), event.type, event.user, ""]


def history(reply: p.HistoryPage) -> Table:
    return table(["Seq", "Time (UTC)", "Event", "User", "Text"], map(_event_row, reply.events),
                 title=f"History of '{reply.room}'" + (" (older events exist)" if reply.more else ""))


def stats(reply: a.ServerStats) -> Table:
    transports = ", ".join(f"{k} {v}" for k, v in sorted(reply.by_transport.items()))
    return table(["Statistic", "Value"], [
        ["Node", (reply.node or "") + (f" (cluster: {', '.join(reply.nodes)})" if len(reply.nodes) > 1 else "")],
        ["Uptime", f"{duration(reply.uptime)} (since {when(reply.started_at)} UTC)"],
        ["Connections", f"{reply.connections}" + (f" ({transports})" if transports else "")],
        ["Connections since start", reply.connections_total],
        ["Users online", reply.users_online],
        ["Users registered", reply.users_registered],
        ["Rooms", reply.rooms],
        ["Messages", reply.messages],
        ["Messages per second", f"{reply.messages_per_second:.1f}"],
        ["Bytes sent", f"{reply.bytes_sent} ({byte_size(reply.bytes_sent)})"],
        ["Bytes per second", f"{reply.bytes_per_second:.0f} ({byte_size(reply.bytes_per_second)}/s)"],
    ])


def admin_log(reply: a.AdminLogPage) -> Table:
    return table(
        ["ID", "Time (UTC)", "Who", "Via", "Action", "Target", "Outcome", "Detail"],
        ([e.id, when(e.ts), e.actor, e.via, e.action, e.target, e.outcome, e.detail] for e in reply.entries),
    )
