"""Build hook: compiles the per-packet core with mypyc; TRAFMETUX_PURE=1 keeps it plain Python.

The compiled modules are drop-in: the same source runs interpreted when they are absent.
Editable installs build them next to their sources, where they take precedence over the .py
files; so a pure build also removes compiled modules an earlier build left there.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "trafmetuxd"


def compiled_modules() -> tuple[str, ...]:
    """The modules to compile: pyproject.toml's [tool.trafmetux] compiled, the only list."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tuple(tomllib.load(f)["tool"]["trafmetux"]["compiled"])


COMPILED = compiled_modules()


def _remove_compiled() -> None:
    for name in (*COMPILED, "_native__mypyc"):
        for built in PACKAGE.glob(f"{name}.*.so"):
            built.unlink()


def _ext_modules() -> list[object]:
    if os.environ.get("TRAFMETUX_PURE") == "1":
        _remove_compiled()
        return []
    from mypyc.build import mypycify

    sources = [f"trafmetuxd/{name}.py" for name in COMPILED]
    return list(mypycify(sources, opt_level="3", group_name="trafmetuxd._native"))


if __name__ == "__main__":  # how setuptools runs it; importing it (a test) builds nothing
    setup(ext_modules=_ext_modules())
