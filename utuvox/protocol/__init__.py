"""The one schema of UtuVox: pydantic models of every frame, and the JSON and text codecs.

This package imports nothing else of UtuVox; the server, the client SDK, the console and the bots all
speak through it.
"""

from .base import Event, Frame, Reply, Request, as_datetime, iso, utc_now
from .errors import Code, ProtocolError

__all__ = ["Code", "Event", "Frame", "ProtocolError", "Reply", "Request", "as_datetime", "iso", "utc_now"]
