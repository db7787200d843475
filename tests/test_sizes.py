"""swarmfl.sizes: byte sizes as people write them, parsed and formatted in binary units."""

from __future__ import annotations

import pytest

from swarmfl.errors import ConfigError
from swarmfl.sizes import format_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("512KiB", 512 * 1024),
        ("100MB", 100_000_000),
        ("1000000", 1_000_000),
        (" 2 gib ", 2 * 2**30),
        ("1.1GB", 1_100_000_000),
        ("0.5KiB", 512),
        (4096, 4096),
    ],
)
def test_parse_bytes_accepts_sizes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-5MiB", "12 parsecs", "1.5", "1e6", "5 Mi B"])
def test_parse_bytes_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_bytes(text)


def test_format_bytes_uses_binary_units() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(1_782_579) == "1.7 MiB"
    assert format_bytes(3 * 2**29) == "1.5 GiB"
    assert parse_bytes(format_bytes(64 * 2**20).replace(" ", "")) == 64 * 2**20
