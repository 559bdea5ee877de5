"""Names of users and rooms: what is allowed, and the key that makes them unique regardless of case.

Names are ASCII letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit, 1 to 32
characters. Keeping names ASCII means no Unicode confusables (an "admin" spelt with a Cyrillic "a") and no
control characters or escapes can ever appear where a name is printed.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

NAME_MAX = 32
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and not name.endswith("\n")


def name_key(name: str) -> str:
    """The case-folded form under which a name is unique (``Bob`` and ``bob`` are one user)."""
    return name.lower()


def _check_name(value: str) -> str:
    if not is_valid_name(value):
        raise ValueError(
            "names are 1 to 32 characters: letters, digits, '_', '-' and '.', starting with a letter or digit"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
