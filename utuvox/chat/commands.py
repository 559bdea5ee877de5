"""What a command may declare besides its handler: the rate bucket it draws from, and the audit record
an admin action fills in. The command table itself (:class:`~utuvox.chat.service.Command`) and the
steps :meth:`~utuvox.chat.service.Chat.handle` applies are in :mod:`utuvox.chat.service`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .limits import Limits
from .session import Session


@dataclass
class Audit:
    """What an audited action tells the admin log besides who and what: the target, and a detail without
    secrets. The handler fills it in as it learns them."""

    target: str | None = None
    detail: str | None = None


# Takes from the bucket a request draws from, or raises ``rate_limited``.
RateCheck = Callable[[Limits, Session, Any], None]


def messages(limits: Limits, session: Session, _request: Any) -> None:
    """A message, or anything that posts to a room as a message does (a file)."""
    limits.check_message(session)


def logins(limits: Limits, session: Session, request: Any) -> None:
    """A password checked for the account the request names."""
    limits.check_login(session, request.username)


def new_account(limits: Limits, session: Session, _request: Any) -> None:
    """A password set for an account that does not exist yet: the connection's and the address's attempts."""
    limits.check_login(session, None)


def own_password(limits: Limits, session: Session, _request: Any) -> None:
    """The signed-in user's own password checked."""
    limits.check_login(session, session.user.name if session.user is not None else None)
