"""The exceptions of the client SDK.

Every failure the server reports arrives as :class:`UtuVoxError`, carrying the server's stable ``code``
(see :class:`utuvox.protocol.errors.Code`) and its sentence for people. It derives from the protocol's
:class:`~utuvox.protocol.errors.ProtocolError`, so code that already catches that keeps working.
"""

from __future__ import annotations

from utuvox.protocol.errors import ProtocolError

# Codes the SDK itself raises; the server never sends them.
DISCONNECTED = "disconnected"
CLOSED = "closed"
TIMEOUT = "timeout"
BAD_FRAME = "bad_frame"
TRANSFER_FAILED = "transfer_failed"


class UtuVoxError(ProtocolError):
    """The server refused a request (``code`` says why), or the SDK could not get it answered.

    ``retry_after`` is set when the server asks the client to slow down (``rate_limited``).
    """

    def __init__(self, code: str, message: str, *, re: int | str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(code, message, re=re)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class Disconnected(UtuVoxError):
    """The connection went away before the answer came, or the client is closed.

    A request that fails this way may or may not have reached the server: a ``message`` sent just as
    the connection broke may be in the room's history. A reconnecting client yields it as an event if it
    was stored, so a bot can check before sending it again.
    """

    def __init__(self, message: str = "Not connected to the server.", *, code: str = DISCONNECTED) -> None:
        super().__init__(code, message)
