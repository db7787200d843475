"""Byte sizes as people write them (``"64MiB"``, ``"1.5GiB"``) and read them.

Kept free of torch and numpy so that the scenario schema and the CLI can parse budgets without
importing the training stack.
"""

from __future__ import annotations

import re

from swarmfl.errors import ConfigError

__all__ = ["format_bytes", "parse_bytes"]

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """Parse a byte size: ``"64MiB"``, ``"1.5GiB"``, ``"512KiB"``, ``"100MB"``, ``"1000000"``.

    Units (case-insensitive, a space before them allowed): B, KB/MB/GB/TB (powers of 1000),
    KiB/MiB/GiB/TiB (powers of 1024). A fractional result is rounded down to whole bytes. A
    plain int is returned as is. Raises :class:`ConfigError` for text that is not a
    non-negative size, or a fraction of a byte without a unit.
    """
    if isinstance(text, bool):
        raise ConfigError(f"not a byte size: {text!r}", key="bytes")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"a byte size cannot be negative, got {text}", key="bytes")
        return text
    if not isinstance(text, str):
        raise ConfigError(f"not a byte size: {text!r}", key="bytes")
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"cannot parse {text!r} as a byte size; expected e.g. '64MiB', '1.5GiB', '512KiB', "
            "'100MB' or '1000000'",
            key="bytes",
        )
    number = match.group(1)
    if "." in number and _UNITS[unit] == 1:
        raise ConfigError(f"a byte count must be whole, got {text!r}", key="bytes")
    if "." not in number:
        return int(number) * _UNITS[unit]
    whole, _, frac = number.partition(".")
    # exact decimal arithmetic: '1.1GB' is 1100000000 bytes, not a float's neighbour of it
    return (int(whole or "0") * 10 ** len(frac) + int(frac)) * _UNITS[unit] // 10 ** len(frac)


def format_bytes(n: int) -> str:
    """A byte count for people: ``"512 B"``, ``"33.4 KiB"``, ``"1.7 MiB"``, ``"1.5 GiB"``."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{abs(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
