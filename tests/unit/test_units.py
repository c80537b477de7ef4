"""Byte counts as text."""

from __future__ import annotations

import pytest

from trafmetuxctl.units import UNITS, auto_unit, format_bytes, format_rate, parse_size


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (25_386_516, "24.21 MiB"),
        (3 * 1024**3 // 2, "1.50 GiB"),
        (5 * 1024**4, "5.00 TiB"),
        (3 * 1024**5, "3072.00 TiB"),
    ],
)
def test_auto_picks_the_largest_iec_unit_with_two_decimals(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize("unit", [u for u in UNITS if u != "B"])
def test_fixed_units_divide_by_their_size(unit: str) -> None:
    n = 123_456_789_012
    figure, shown = format_bytes(n, unit).split()
    assert shown == unit
    assert float(figure) == pytest.approx(n / UNITS[unit], abs=0.005)


def test_bytes_are_shown_exactly() -> None:
    assert format_bytes(123_456_789_012, "B") == "123456789012 B"
    assert auto_unit(1024**2 - 1) == "KiB"


def test_si_and_iec_differ() -> None:
    assert format_bytes(1_000_000, "MB") == "1.00 MB"
    assert format_bytes(1_000_000, "MiB") == "0.95 MiB"


def test_unknown_unit_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown unit"):
        format_bytes(1, "mib")


def test_rates_append_per_second() -> None:
    assert format_rate(1536.0) == "1.50 KiB/s"


def test_sizes_on_the_command_line_take_the_units_they_are_shown_in() -> None:
    assert [parse_size(t) for t in ("1MiB", "500 MB", "1.5GiB", "1024", "2kb")] == [
        1_048_576, 500_000_000, 1_610_612_736, 1024, 2000
    ]  # fmt: skip
    for bad in ("", "1XB", "-1MiB", "MiB", "1.5.2GB"):
        with pytest.raises(ValueError, match="expected a byte count"):
            parse_size(bad)
