"""Shell completion for trafmetuxctl: subcommands, options and their choices from the parser,
monitor and quota names from a real daemon over its socket, nothing when it is unreachable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_http import Daemon, make_capture
from trafmetuxctl.cli import build_parser
from trafmetuxd import completions
from trafmetuxd.manpages import subcommands

CTL = str(Path(sys.executable).parent / "trafmetuxctl")
CTL_NAME = "trafmetuxctl"


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated bash and zsh scripts, as files."""
    out = tmp_path_factory.mktemp("completion")
    parser = build_parser()
    (out / "trafmetuxctl.bash").write_text(completions.bash(parser))
    (out / "_trafmetuxctl").write_text(completions.zsh(parser))
    return {"bash": out / "trafmetuxctl.bash", "zsh": out / "_trafmetuxctl"}


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """A daemon serving a small replay: monitors input and output, quota mobile."""
    root = Path(tempfile.mkdtemp(prefix="trafmetux-complete-"))
    os.chmod(root, 0o755)  # the front's unprivileged user reaches the socket
    served = Daemon(root)
    capture = root / "a.pcap"
    make_capture(capture, time.time() - 600, 2, 100)
    try:
        served.start(capture)
        yield served
    finally:
        served.stop()
        shutil.rmtree(root, ignore_errors=True)


def complete_bash(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of `words` (the command line so far), one per line."""
    array = " ".join(f"'{w}'" for w in (CTL, *words))
    program = (
        f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
        'COMPREPLY=(); _trafmetuxctl; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                            timeout=30, check=True)  # fmt: skip
    assert result.stderr == ""
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_subcommands_options_and_choices(scripts: dict[str, Path]) -> None:
    bash = scripts["bash"]
    names = [name for name, _, _ in subcommands(build_parser())]
    assert complete_bash(bash, "") == names
    assert complete_bash(bash, "show-d") == ["show-daily"]
    assert complete_bash(bash, "--j") == ["--json"]
    assert complete_bash(bash, "show-hosts", "--so") == ["--sort"]
    assert complete_bash(bash, "show-hosts", "--sort", "") == ["total", "in", "out"]
    assert complete_bash(bash, "show-daily", "-u", "Ki") == ["KiB"]
    assert complete_bash(bash, "top", "--by", "s") == ["server"]
    assert complete_bash(bash, "show-daily", "-t", "") == []  # a number: nothing to offer


def test_bash_completes_monitor_and_quota_names_from_the_daemon(
    scripts: dict[str, Path], daemon: Daemon
) -> None:
    bash, sock = scripts["bash"], str(daemon.sock)
    assert complete_bash(bash, "--socket", sock, "show-daily", "") == ["input", "output"]
    assert complete_bash(bash, "--socket", sock, "show-flows", "o") == ["output"]
    assert complete_bash(bash, "--socket", sock, "top", "--by", "port", "i") == ["input"]
    assert complete_bash(bash, "--socket", sock, "check-quota", "") == ["mobile"]


def test_names_complete_to_nothing_and_silently_without_a_daemon(
    scripts: dict[str, Path], tmp_path: Path
) -> None:
    missing = str(tmp_path / "nobody.sock")
    assert complete_bash(scripts["bash"], "--socket", missing, "show-daily", "") == []
    result = subprocess.run([CTL, "--socket", missing, "--complete", "monitors"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_complete_prints_the_daemons_names_one_a_line(daemon: Daemon) -> None:
    for kind, expected in (("monitors", "input\noutput\n"), ("quotas", "mobile\n")):
        result = subprocess.run([CTL, "--socket", str(daemon.sock), "--complete", kind],
                                capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        assert result.stdout == expected


# Types a command line into an interactive zsh (in a pty) with the generated function on its
# fpath, presses TAB, and prints what the completion system added between << and >> (the real
# compadd runs too: it is only watched), then clears the line unrun.
ZSH_CAPTURE = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "bindkey -e; PROMPT=; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd () { builtin compadd -O __hits "$@"; print -l -- "<<" $__hits ">>";
  builtin compadd "$@" }'
zpty -w z "zstyle ':completion:*' list-prompt ''; zstyle ':completion:*' menu no"
zpty -w -n z "$2"$'\t'
zpty -w z $'\C-a\C-k'"print DO""NE"
out=""
while zpty -r -t z line || sleep 0.05; do
  out+="$line"; line=""
  [[ $out == *DONE* ]] && break
done
print -r -- "$out"
zpty -d z
"""


def complete_zsh(script: Path, line: str, tmp_path: Path) -> list[str]:
    """What zsh's completion system offers after `line` (every compadd call's matches)."""
    zsh = shutil.which("zsh")
    assert zsh, "zsh is not installed (make install installs it)"
    capture = tmp_path / "capture.zsh"
    capture.write_text(ZSH_CAPTURE)
    env = {**os.environ, "PATH": f"{Path(CTL).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    out = subprocess.run([zsh, "-f", str(capture), str(script.parent), line], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.replace("\r", "\n"))
    found: list[str] = []
    for block in re.findall(r"<<\n(.*?)>>", text, re.DOTALL):
        found += [w.strip() for w in block.splitlines() if w.strip()]
    return found


def test_zsh_completes_subcommands_choices_and_the_daemons_names(
    scripts: dict[str, Path], daemon: Daemon, tmp_path: Path
) -> None:
    zsh_script = scripts["zsh"]
    assert "show-daily" in complete_zsh(zsh_script, f"{CTL_NAME} show-d", tmp_path)
    sort = complete_zsh(zsh_script, f"{CTL_NAME} show-hosts --sort ", tmp_path)
    assert sorted(sort) == ["in", "out", "total"]
    names = complete_zsh(zsh_script, f"{CTL_NAME} --socket {daemon.sock} show-daily ", tmp_path)
    assert "input" in names and "output" in names
    quotas = complete_zsh(zsh_script, f"{CTL_NAME} --socket {daemon.sock} quota ", tmp_path)
    assert "mobile" in quotas and "input" not in quotas


def test_the_zsh_function_parses_and_offers_every_subcommand(scripts: dict[str, Path]) -> None:
    zsh = shutil.which("zsh")
    assert zsh, "zsh is not installed (make install installs it)"
    subprocess.run([zsh, "-n", str(scripts["zsh"])], check=True, timeout=30)
    text = scripts["zsh"].read_text()
    assert text.startswith("#compdef trafmetuxctl\n")
    for name, _, _ in subcommands(build_parser()):
        assert f"\n        '{name}:" in text and f"\n        {name}) _arguments" in text
    assert "_trafmetuxctl_names monitors" in text and "_trafmetuxctl_names quotas" in text
