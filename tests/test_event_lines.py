"""A room message's JSON line written directly is the model's own encoding, byte for byte, and reads
back as the same model: clients, the store and the IRC and text renderers cannot tell them apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from utuvox.chat.wire import Wire
from utuvox.protocol import event_lines, json_codec
from utuvox.protocol.core import MessageEvent
from utuvox.protocol.stored import CURRENT_VERSION, load_event

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Any text a validated request can hold: every code point but the lone surrogates JSON cannot carry.
texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1)
names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=32)
flags = st.none() | st.booleans()
micros = st.integers(min_value=0, max_value=4_102_444_800 * 1_000_000)  # up to 2100


@given(micros, names, names, texts, st.none() | names, flags, flags, flags, flags,
       st.none() | st.dictionaries(names, texts, max_size=4))
def test_a_written_line_is_the_models_encoding(at: int, room: str, user: str, text: str, nick: str | None,
                                               guest: bool | None, bot: bool | None, action: bool | None,
                                               notice: bool | None, tags: dict[str, str] | None) -> None:
    ts = EPOCH + timedelta(microseconds=at)
    model = MessageEvent(ts=ts, room=room, seq=0, user=user, text=text, nick=nick, guest=guest, bot=bot,
                         action=action, notice=notice, tags=tags)
    face = {key: value for key, value in (("nick", nick), ("guest", guest), ("bot", bot)) if value is not None}
    line = event_lines.message(at, room, user, text, face, action, notice, tags)
    assert line == json_codec.encode(model)
    assert load_event(CURRENT_VERSION, line) == model


def test_times_within_one_second_and_across_seconds_are_each_their_own() -> None:
    # The date and time of day are formatted once a second and reused: the reuse must never leak into
    # another second, forwards or backwards.
    base = 1_764_750_000 * 1_000_000
    for at in (base, base + 1, base + 999_999, base + 1_000_000, base - 1, base + 86_400_000_000, base):
        expected = (EPOCH + timedelta(microseconds=at)).strftime("%Y-%m-%dT%H:%M:%S")
        fraction = at % 1_000_000
        assert event_lines.stamp(at) == expected + (f".{fraction:06d}Z" if fraction else "Z")


def test_a_wire_made_from_a_line_makes_its_model_once_and_only_when_asked() -> None:
    line = event_lines.message(1_764_750_000_123_456, "lobby", "alice", 'say "hi"', {"nick": "al"})
    numbered = line.replace(b',"seq":0,', b',"seq":7,', 1)
    wire = Wire.line("message", "lobby", 7, numbered)
    assert (wire.kind, wire.room, wire.seq, wire.json) == ("message", "lobby", 7, numbered)
    assert wire._event is None  # nothing is parsed for a JSON reader
    event = wire.event
    assert isinstance(event, MessageEvent)
    assert (event.seq, event.user, event.nick, event.text) == (7, "alice", "al", 'say "hi"')
    assert event.ts == datetime(2025, 12, 3, 8, 20, 0, 123_456, tzinfo=UTC)
    assert wire.event is event
    # The readers that render it get what they got from a wire made from the model.
    made = Wire(event)
    assert wire.text("lobby") == made.text("lobby") == b'[2025-12-03 08:20:00] alice: say "hi"\n'
    assert wire.text("hall") == made.text("hall")
    assert wire.irc(0) == made.irc(0) == b':al!~alice@utuvox PRIVMSG #lobby :say "hi"\r\n'
