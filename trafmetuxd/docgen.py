"""`python -m trafmetuxd.docgen OUTDIR`: the manual pages and shell completions, generated.

Writes, below OUTDIR, the layout of /usr/local/share: man/man1/trafmetuxctl.1,
man/man5/trafmetux.toml.5, man/man8/trafmetuxd.8, bash-completion/completions/trafmetuxctl and
zsh/site-functions/_trafmetuxctl. Needs only the stdlib and the source tree (PYTHONPATH=.), so
`make man` runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trafmetuxd import __version__, completions, manpages

CONFIG_DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def generated(config_doc: Path = CONFIG_DOC) -> dict[str, str]:
    """Relative path -> text of every generated file."""
    os.environ.pop("TRAFMETUX_SOCKET", None)  # the default shown is the built-in one
    from trafmetuxctl.cli import build_parser as ctl_parser
    from trafmetuxd.__main__ import build_parser as daemon_parser

    ctl, daemon = ctl_parser(), daemon_parser()
    return {
        "man/man8/trafmetuxd.8": manpages.command_page(
            daemon, 8, "exact per-monitor network traffic meter", __version__,
            "System Administration",
        ),
        "man/man1/trafmetuxctl.1": manpages.command_page(
            ctl, 1, "reports, flows, live rates and quotas from trafmetuxd", __version__,
            "User Commands",
        ),
        "man/man5/trafmetux.toml.5": manpages.markdown_page(
            config_doc.read_text(), "trafmetux.toml", 5, "trafmetuxd configuration file",
            __version__,
        ),
        "bash-completion/completions/trafmetuxctl": completions.bash(ctl),
        "zsh/site-functions/_trafmetuxctl": completions.zsh(ctl),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Write every generated file below OUTDIR."""
    parser = argparse.ArgumentParser(prog="python -m trafmetuxd.docgen", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--config-doc", type=Path, default=CONFIG_DOC)
    args = parser.parse_args(argv)
    for name, text in generated(args.config_doc).items():
        path = args.outdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
