"""The one sanitiser of text that people wrote and other people's screens show: message text, private
messages, announcements, topics, reasons, addresses and file names.

Replaced by U+FFFD:

- every control character: C0, DEL and C1 (ANSI escapes, OSC title changes, carriage returns, backspaces,
  bells, NEL), which a terminal would obey rather than show;
- every bidirectional control: the embeddings, overrides and isolates, the LRM, RLM and Arabic letter
  marks (U+202E makes ``txt.exe`` read ``exe.txt``, and a reordered line can pass for someone else's);
- the line and paragraph separators U+2028 and U+2029 (a second line inside one);
- the invisible format characters that have no use in chat: the byte order mark, the deprecated
  U+206A-U+206F and the interlinear annotation marks U+FFF9-U+FFFB (which hide the text between them);
- lone surrogates, which no terminal can show and no UTF-8 encoder can write.

Joiners and the other format characters that scripts and emoji sequences need are kept. Text mode, the
terminal client and the console show every such text through :func:`clean`; file names are cleaned with it
when they are announced. JSON clients get message text as it was sent: showing it safely is their
renderer's job (docs/SECURITY.md).
"""

from __future__ import annotations

import re

# (first, last) code points, inclusive.
_UNSAFE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F), (0x007F, 0x009F),  # C0, DEL, C1
    (0x061C, 0x061C), (0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069),  # bidirectional controls
    (0x2028, 0x2029),  # line and paragraph separators
    (0x206A, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB),  # invisible format characters
    (0xD800, 0xDFFF),  # surrogates
)  # fmt: skip

UNSAFE: frozenset[int] = frozenset(cp for first, last in _UNSAFE_RANGES for cp in range(first, last + 1))
"""Every code point :func:`clean` replaces."""

# One character class: a regular expression finds these several times faster than str.translate.
_UNSAFE_RE = re.compile("[" + "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in _UNSAFE_RANGES) + "]")


def clean(text: str) -> str:
    """``text`` with every unsafe character replaced by U+FFFD."""
    return _UNSAFE_RE.sub("\ufffd", text)


def is_safe(text: str) -> bool:
    """Whether ``text`` would come out of :func:`clean` unchanged."""
    return _UNSAFE_RE.search(text) is None
