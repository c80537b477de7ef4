"""Byte counts as text: fixed IEC/SI units or auto (IEC, two decimals). Pure."""

from __future__ import annotations

UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}
UNIT_CHOICES = (*UNITS, "auto")
_AUTO = ("B", "KiB", "MiB", "GiB", "TiB")


def parse_size(text: str) -> int:
    """Bytes from '1MiB', '500 MB', '1.5GiB' or '1024' (ValueError naming the text if not)."""
    stripped = text.strip()
    number = stripped.rstrip("BiKMGTbkmgt ")
    unit = stripped[len(number) :].strip()
    scale = {name.lower(): size for name, size in UNITS.items()}.get(unit.lower() or "b")
    try:
        value = float(number) if "." in number else int(number)
    except ValueError:
        scale = None
    if scale is None or value < 0:
        raise ValueError(f"{text!r}: expected a byte count or a size such as 1MiB or 500MB")
    return round(value * scale)


def auto_unit(n: int) -> str:
    """The largest IEC unit that keeps the figure at or above 1 (B for small counts)."""
    unit = "B"
    for name in _AUTO:
        if abs(n) >= UNITS[name]:
            unit = name
    return unit


def format_bytes(n: int, unit: str = "auto") -> str:
    """'24.21 MiB', '512 B', or in a fixed unit ('0.02 GiB'); bytes are shown exactly."""
    if unit == "auto":
        unit = auto_unit(n)
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose from {', '.join(UNIT_CHOICES)}")
    if unit == "B":
        return f"{n} B"
    return f"{n / UNITS[unit]:.2f} {unit}"


def format_rate(bytes_per_second: float, unit: str = "auto") -> str:
    """A rate such as '1.50 MiB/s'."""
    return format_bytes(round(bytes_per_second), unit) + "/s"
