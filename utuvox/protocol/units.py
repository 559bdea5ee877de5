"""How quantities read for people, the same in text mode, the terminal client, the console and the
server's error messages: byte counts in binary units, durations in days, hours, minutes and seconds."""

from __future__ import annotations

_BINARY_UNITS = ("KiB", "MiB", "GiB")


def byte_size(n: float) -> str:
    """A byte count in binary units: ``512 B``, ``1.5 KiB``, ``120.0 MiB``, ``3.0 GiB``.

    Whole bytes below 1 KiB, then one decimal in the largest unit that keeps the figure under 1024; GiB is
    the largest (``2048.0 GiB``).
    """
    if n < 1024:
        return f"{n:.0f} B"
    for unit in _BINARY_UNITS:
        n /= 1024
        if n < 1024 or unit == _BINARY_UNITS[-1]:
            break
    return f"{n:.1f} {unit}"


def duration(seconds: float) -> str:
    """``1d 2h 3m 4s``, leaving out the leading zero units (``4s``, ``3m 0s``); fractions are dropped."""
    left = int(seconds)
    parts: list[str] = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= length or parts:
            parts.append(f"{left // length}{unit}")
            left %= length
    return " ".join([*parts, f"{left}s"])
