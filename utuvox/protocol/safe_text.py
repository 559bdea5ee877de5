"""The one sanitiser of text that people wrote and other people's screens show: message text, private
messages, announcements, reasons and file names.

Replaced by U+FFFD: every C0 control character, DEL and every C1 control (ANSI escapes, OSC title changes,
carriage returns, backspaces, NEL), the bidirectional embeddings, overrides and isolates and the
left-to-right and right-to-left marks (U+202E makes ``txt.exe`` read ``exe.txt``), the line and paragraph
separators U+2028 and U+2029 (a second line inside one), and the byte order mark. Text mode renders every
such text through it; file names are cleaned with it when they are announced. JSON clients get message
text as it was sent: showing it safely is their renderer's job (docs/SECURITY.md).
"""

from __future__ import annotations

UNSAFE = frozenset([*range(0x00, 0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, 0x2028, 0x2029,
                    *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF])
_TABLE = dict.fromkeys(UNSAFE, "\ufffd")


def clean(text: str) -> str:
    """``text`` with every unsafe character replaced by U+FFFD."""
    return text.translate(_TABLE)
