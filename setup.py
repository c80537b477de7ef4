"""Build hook: compiles the per-packet core with mypyc; TRAFMETUX_PURE=1 keeps it plain Python.

The compiled modules are drop-in: the same source runs interpreted when they are absent.
Editable installs build them next to their sources, where they take precedence over the .py
files; so a pure build also removes compiled modules an earlier build left there.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

COMPILED = ("packet", "rules", "collector", "meter", "nfbatch")
PACKAGE = Path(__file__).resolve().parent / "trafmetuxd"


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


setup(ext_modules=_ext_modules())
