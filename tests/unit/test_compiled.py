"""Whether the per-packet core runs compiled (mypyc), and that it answers as its source does.

`make install` compiles the modules listed in pyproject.toml's [tool.trafmetux] compiled (the one
list setup.py and the Makefile read too); TRAFMETUX_PURE=1 installs them as plain Python. CI
must run the compiled build, so there a pure core is a failure. A compiled module older than its
source is a stale build: the old code would run.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trafmetuxd
from trafmetuxd import packet

# The package's own directory: compiled modules report a wrong __file__ (mypyc, package groups).
PACKAGE = Path(str(trafmetuxd.__file__)).parent
ROOT = PACKAGE.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPILED: list[str] = PYPROJECT["tool"]["trafmetux"]["compiled"]
CORE = tuple(importlib.import_module(f"trafmetuxd.{name}") for name in COMPILED)
GROUP = "_native__mypyc"  # the shared library of the mypyc group: holds every module's code
SUFFIX = "cpython-311-x86_64-linux-gnu.so"  # any extension suffix does for the guard's own test


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


def stale_builds(package: Path, names: list[str]) -> list[str]:
    """Compiled modules in `package` older than a source they were built from, or not listed."""
    out = []
    for built in sorted(package.glob("*.so")):
        name = built.name.split(".")[0]
        if name != GROUP and name not in names:
            out.append(f"{built.name}: not in [tool.trafmetux] compiled, yet it shadows its source")
            continue
        sources = names if name == GROUP else [name]
        for source in (package / f"{s}.py" for s in sources):
            if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
                out.append(f"{built.name} is older than {source.name}")
    return out


def test_no_compiled_module_is_older_than_its_source() -> None:
    stale = stale_builds(PACKAGE, COMPILED)
    assert not stale, f"stale compiled modules (run `make install`): {stale}"


def test_the_stale_build_guard_finds_an_edited_source_and_an_unlisted_module(
    tmp_path: Path,
) -> None:
    for name in (
        "packet.py",
        "rules.py",
        f"packet.{SUFFIX}",
        f"rules.{SUFFIX}",
        f"{GROUP}.{SUFFIX}",
    ):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1000, 1000))
    assert stale_builds(tmp_path, ["packet", "rules"]) == []
    os.utime(tmp_path / "rules.py", (2000, 2000))  # edited after the build
    (tmp_path / f"old.{SUFFIX}").write_bytes(b"")  # dropped from the list, still shadowing
    assert stale_builds(tmp_path, ["packet", "rules"]) == [
        f"{GROUP}.{SUFFIX} is older than rules.py",
        f"old.{SUFFIX}: not in [tool.trafmetux] compiled, yet it shadows its source",
        f"rules.{SUFFIX} is older than rules.py",
    ]


def test_setup_and_the_makefile_compile_the_one_list_in_pyproject() -> None:
    spec = importlib.util.spec_from_file_location("trafmetux_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # guarded: importing it builds nothing
    assert list(setup.COMPILED) == COMPILED
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make to ask for its list")
    out = subprocess.run(
        [make, "-s", "--no-print-directory", "--eval=print-compiled: ; @echo $(COMPILED)",
         "print-compiled"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert out.stdout.split() == [f"trafmetuxd/{name}.py" for name in COMPILED]


def test_dev_mypy_is_the_version_that_compiles_the_core() -> None:
    build = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("mypy")]
    dev = [r for r in PYPROJECT["project"]["optional-dependencies"]["dev"] if r.startswith("mypy")]
    pinned = re.fullmatch(r"mypy\[mypyc\]==([\w.]+)", build[0])
    assert pinned is not None, build
    assert dev == [f"mypy=={pinned[1]}"]
    assert importlib.metadata.version("mypy") == pinned[1]  # what `make lint` runs
