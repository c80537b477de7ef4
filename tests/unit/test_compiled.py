"""Whether the per-packet core runs compiled (mypyc), and that it answers as its source does.

`make install` compiles packet, rules, collector and meter; TRAFMETUX_PURE=1 installs them as
plain Python. CI must run the compiled build, so there a pure core is a failure.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trafmetuxd
from trafmetuxd import collector, meter, nfbatch, packet, rules

CORE = (packet, rules, collector, meter, nfbatch)
# The package's own directory: compiled modules report a wrong __file__ (mypyc, package groups).
PACKAGE = Path(str(trafmetuxd.__file__)).parent


def is_compiled(module: ModuleType) -> bool:
    """True when the module was loaded from an extension module rather than its source."""
    return isinstance(module.__spec__.loader, importlib.machinery.ExtensionFileLoader)


def compiled_core() -> list[str]:
    return [m.__name__ for m in CORE if is_compiled(m)]


def test_the_core_is_compiled_as_a_whole_and_in_ci() -> None:
    compiled = compiled_core()
    # A half-compiled core means a build that broke midway: it must not pass for either kind.
    assert compiled in ([], [m.__name__ for m in CORE]), compiled
    if os.environ.get("CI"):
        assert compiled, "CI runs the pure-Python core: `make install` compiles it"
    if not compiled:
        pytest.skip("the core runs as plain Python (not compiled)")


def _pure_packet() -> ModuleType:
    """packet.py loaded from its source under another name, whatever the installed build."""
    spec = importlib.util.spec_from_file_location("pure_packet", PACKAGE / "packet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PURE_PACKET = _pure_packet()


@given(st.binary(max_size=120))
def test_parse_answers_as_its_source_does_for_any_bytes(buf: bytes) -> None:
    assert packet.parse(buf) == PURE_PACKET.parse(buf)


@given(
    st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F]),
    st.sampled_from([0, 6, 17, 44, 58, 132]),
    st.binary(min_size=60, max_size=120),
)
def test_parse_answers_as_its_source_does_for_ip_headers(
    first: int, proto: int, rest: bytes
) -> None:
    # Plausible first bytes and protocols reach the port and extension-header paths.
    buf = bytearray(bytes([first]) + rest)
    buf[9 if first < 0x60 else 6] = proto
    assert packet.parse(bytes(buf)) == PURE_PACKET.parse(bytes(buf))
