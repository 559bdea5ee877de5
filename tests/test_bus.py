"""The in-process bus: every member gets each event once, in subscription order, whatever another
member's delivery does."""

from __future__ import annotations

from utuvox.chat.bus import LocalBus
from utuvox.chat.session import Session
from utuvox.chat.wire import Wire
from utuvox.protocol import core as p

from .fakes import BrokenPeer, FakePeer


def test_members_around_failing_deliveries_get_the_event_and_only_the_failing_are_closed() -> None:
    bus = LocalBus()
    peers = [FakePeer(), BrokenPeer(), BrokenPeer(), FakePeer(), BrokenPeer()]
    sessions = [Session(peer=peer, transport="tcp", address="test") for peer in peers]
    for session in sessions:
        bus.subscribe("lobby", session)
    event = p.MessageEvent(room="lobby", seq=1, user="alice", text="hello")
    bus.publish("lobby", Wire(event))
    assert [peer.frames for peer in peers] == [[event], [], [], [event], []]
    assert [peer.closed is not None for peer in peers] == [False, True, True, False, True]
    assert all(peer.closed[1] == "internal_error" for peer in peers if peer.closed)
    assert bus.deliveries == 5  # (a closed member is unsubscribed by its session, not by the bus)
