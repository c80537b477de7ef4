"""Manual pages and --version: generated from the parsers and docs/config.md, which must agree
with config.py's models; each page renders without a warning and names everything it documents.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trafmetuxctl.cli import build_parser as ctl_parser
from trafmetuxd import __version__, config
from trafmetuxd.__main__ import build_parser as daemon_parser
from trafmetuxd.docgen import generated
from trafmetuxd.manpages import subcommands, visible

ROOT = Path(__file__).resolve().parents[2]
CONFIG_MD = ROOT / "docs" / "config.md"
BIN = Path(sys.executable).parent
PAGES = {
    "trafmetuxd": "man/man8/trafmetuxd.8",
    "trafmetuxctl": "man/man1/trafmetuxctl.1",
    "trafmetux.toml": "man/man5/trafmetux.toml.5",
}
# docs/config.md section heading -> the model whose keys its table lists
SECTIONS = {
    "Top level": config._Root,
    "`[capture]`": config._Capture,
    "`[retention]`": config._Retention,
    "`[http]`": config._Http,
    "`[store]`": config._Store,
    "`[[monitor]]`": config._Monitor,
    "Rules": config._Rule,
    "`[[quota]]`": config._Quota,
}
SUBTABLES = {"capture", "retention", "http", "store", "monitor", "quota"}  # own sections, not keys


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated pages, written where `man -l` can read them."""
    out = tmp_path_factory.mktemp("share")
    files = generated()
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return {page: out / path for page, path in PAGES.items()}


def render(page: Path) -> tuple[str, str]:
    """`man -l` of a page as plain text (80 columns), and what man and groff warned."""
    man = shutil.which("man")
    assert man, "man is not installed (make install installs man-db and groff-base)"
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    result = subprocess.run(
        [man, "--warnings=w", "-l", str(page)], capture_output=True, text=True, env=env,
        timeout=60, check=True,
    )  # fmt: skip
    text = re.sub(r".\x08", "", result.stdout).replace("\u2010", "-").replace("\u2212", "-")
    return text, result.stderr


@pytest.mark.parametrize("page", list(PAGES))
def test_each_page_renders_with_man_without_a_warning(pages: dict[str, Path], page: str) -> None:
    text, warnings = render(pages[page])
    assert warnings == ""
    assert text.startswith(page.upper()) and "SEE ALSO" in text
    groff = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(pages[page])],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert groff.stderr == ""


def test_the_client_page_names_every_command_and_option(pages: dict[str, Path]) -> None:
    text, _ = render(pages["trafmetuxctl"])
    parser = ctl_parser()
    for action in visible(parser):
        for flag in action.option_strings:
            assert flag in text, flag
    commands = subcommands(parser)
    assert len(commands) == 18
    for name, _, sub in commands:
        # its subsection: up to the next subsection or section heading
        section = re.split(r"\n(?:   )?\S", text.split(f"\n   {name}\n", 1)[1], maxsplit=1)[0]
        assert sub.description and " ".join(sub.description.split()[:4]) in " ".join(
            section.split()
        )
        for action in visible(sub):
            for flag in action.option_strings if action.dest != "help" else ():
                assert flag in section, (name, flag)
    assert "--timeout" not in text  # hidden from --help, hidden here


def test_the_daemon_page_names_every_option_with_its_help(pages: dict[str, Path]) -> None:
    text, _ = render(pages["trafmetuxd"])
    flat = " ".join(text.split())
    for action in visible(daemon_parser()):
        for flag in action.option_strings:
            assert flag in text, flag
        assert " ".join((action.help or "").split()[:5]) in flat, action.help


def doc_tables() -> dict[str, list[list[str]]]:
    """docs/config.md: section heading -> the rows (cells) of the table below it."""
    out: dict[str, list[list[str]]] = {}
    section = ""
    for line in CONFIG_MD.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("|") and section in SECTIONS and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.setdefault(section, []).append(cells)  # the heading row first
    return out


def documented_keys() -> dict[str, set[str]]:
    """Section heading -> the keys its table documents (first cell, in backticks)."""
    return {
        section: {rows[0].strip("`") for rows in table[1:]}
        for section, table in doc_tables().items()
    }


def test_the_config_reference_documents_exactly_the_models_keys() -> None:
    keys = documented_keys()
    assert set(keys) == set(SECTIONS)
    for section, model in SECTIONS.items():
        fields = set(model.model_fields) - (SUBTABLES if model is config._Root else set())
        assert keys[section] == fields, section


def test_the_documented_defaults_are_the_defaults(tmp_path: Path) -> None:
    defaults = config.parse("", tmp_path / "t.toml")
    checked = 0
    for section, table in (("Top level", ""), ("`[capture]`", "capture"),
                           ("`[retention]`", "retention"), ("`[http]`", "http")):  # fmt: skip
        head, *rows = doc_tables()[section]
        column = head.index("default")
        for row in rows:
            found = re.match(r"`([^`]*)`", row[column])
            if found is None:  # "none", "required": no value to try
                continue
            key = row[0].strip("`")
            text = (f"[{table}]\n" if table else "") + f"{key} = {found.group(1)}\n"
            tomllib.loads(text)  # the documented default is TOML as written
            assert config.parse(text, tmp_path / "t.toml") == defaults, (section, key)
            checked += 1
    assert checked >= 20


def test_the_configuration_page_names_every_key(pages: dict[str, Path]) -> None:
    text, _ = render(pages["trafmetux.toml"])
    tags = {line.strip() for line in text.splitlines()}
    words = set(text.split())
    for keys in documented_keys().values():
        for key in keys:
            assert key in tags or key in words, key


def test_version_comes_from_the_package_metadata_for_both_programs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
    for program in ("trafmetuxd", "trafmetuxctl"):
        out = subprocess.run([str(BIN / program), "--version"], capture_output=True, text=True,
                             timeout=60, check=True)  # fmt: skip
        assert out.stdout == f"{program} {__version__}\n"


def test_make_man_writes_every_page_and_completion(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make
    out = tmp_path / "share"
    subprocess.run([make, "-s", "man", f"GENERATED={out}"], cwd=ROOT, check=True, timeout=120)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [".generated", *generated()]
    )
    for name, text in generated().items():
        assert (out / name).read_text() == text
