"""The UtuVox client SDK (trio): connect over TCP or WebSocket, make requests, receive events.

::

    from utuvox.client import connect

    async with connect("tcp://127.0.0.1:9090", reconnect=True) as client:
        await client.login("bob", "secret")
        await client.join("general")
        async for event in client:
            ...

See docs/CLIENT.md for the full reference. This package imports only :mod:`utuvox.protocol`.
"""

from .client import Client, connect
from .errors import Disconnected, UtuVoxError
from .transport import Address, parse_url

__all__ = ["Address", "Client", "Disconnected", "UtuVoxError", "connect", "parse_url"]
