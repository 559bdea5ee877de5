"""What a section of the settings is: a frozen pydantic model whose fields declare a setting each.

A field's name, default, bounds and description are the setting's, in one place. The server composes the
sections into its settings tree (``utuvox.server.settings``), where each field is read from the environment
variable ``UTUVOX_<NAME>``: the field's own name, or the one an :class:`Env` marker gives it. A field of
a compound type (a :class:`~utuvox.chat.limits.Rate`) is one variable per part: ``<name>_per_second`` and
``<name>_burst``. Sections nested in a section add nothing to the names: the names stay flat, as operators
have always set them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A group of settings used by one part of the server, built with defaults for anything not given."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class Env:
    """A field's environment variable, without ``UTUVOX_`` and in lower case, where it is not the field's
    name; ``Env(None)`` marks a field that no variable sets (a tunable of the code, or a value the server
    works out from other settings)."""

    name: str | None


NOT_A_SETTING = Env(None)

__all__ = ["NOT_A_SETTING", "Env", "Section"]
