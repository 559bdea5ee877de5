"""Who is on IRC: each IRC connection's state by session, and who holds which nick.

Nicks are an IRC matter, but they live beside the accounts: a nick equal to an account's name belongs
to that account, and a guest's nick is the name the other transports see.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from utuvox.chat.session import Session


class Registrant(Protocol):
    """What the registry reads of an IRC connection (:class:`~utuvox.server.irc.client.IrcClient`)."""

    @property
    def session(self) -> Session: ...

    @property
    def nick(self) -> str | None: ...

    @property
    def registered(self) -> bool: ...

    @property
    def realname(self) -> str: ...


IrcClient = TypeVar("IrcClient", bound=Registrant)


@dataclass
class IrcRegistry(Generic[IrcClient]):
    guests: bool = True  # connections that give a nick only may use the server
    register_before_connect: bool = True  # REGISTER allowed before the connection is registered
    max_users: int = 0  # the most people seen online at once (LUSERS)
    # Who was here (WHOWAS), newest last: (nick, ident, realname).
    gone: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    clients: dict[Session, IrcClient] = field(default_factory=dict)
    _nicks: dict[str, dict[IrcClient, None]] = field(default_factory=dict)

    def add(self, client: IrcClient) -> None:
        self.clients[client.session] = client

    def remove(self, client: IrcClient) -> None:
        self.clients.pop(client.session, None)
        if client.nick is not None:
            self._drop(client.nick, client)
            if client.registered:
                self.gone.append((client.nick, client.session.ident or "~" + client.nick, client.realname))

    def holders(self, nick: str) -> list[IrcClient]:
        return list(self._nicks.get(nick.lower(), ()))

    def take(self, client: IrcClient, nick: str) -> None:
        if client.nick is not None:
            self._drop(client.nick, client)
        self._nicks.setdefault(nick.lower(), {})[client] = None

    def _drop(self, nick: str, client: IrcClient) -> None:
        holders = self._nicks.get(nick.lower())
        if holders is not None:
            holders.pop(client, None)
            if not holders:
                del self._nicks[nick.lower()]

    def registered(self) -> Iterator[IrcClient]:
        return (c for c in self.clients.values() if c.registered)

    def of(self, session: Session) -> IrcClient | None:
        return self.clients.get(session)
