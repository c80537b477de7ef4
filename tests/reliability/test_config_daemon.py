"""Bad configurations at the daemon level: a clear message, a non-zero exit, nothing metered.

tests/unit/test_config.py holds the table of 65 invalid configs against config.load(); here
the real `trafmetuxd --config bad.toml` runs in a namespace: exit 2 (1 for a state directory
that cannot be used), the key or path named, no rule installed, no database created.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from test_store_faults import tmpfs

from harness.netns import PYTHON, Pair

GOOD = '[capture]\ninterfaces = ["veth-a"]\n[[monitor]]\nname = "all"\n'

BAD = [
    # (what, config text with STATE for the state dir, exit status, text the message holds)
    ("flow_log shared by two monitors",
     '[[monitor]]\nname = "a"\nflow_log = "f.log"\n[[monitor]]\nname = "b"\nflow_log = "f.log"\n',
     2, "flow_log"),
    ("flow_log escaping the state dir", '[[monitor]]\nname = "a"\nflow_log = "../../x/{monitor}"\n',
     2, "'..'"),
    ("bad CIDR", '[[monitor]]\nname = "a"\nrules = [{ src = "10.0.0.300/8" }]\n', 2, "10.0.0.300"),
    ("duplicate monitor", '[[monitor]]\nname = "a"\n[[monitor]]\nname = "a"\n', 2, "'a'"),
    ("bad time zone", 'timezone = "Mars/Olympus"\n' + GOOD, 2, "Mars/Olympus"),
    ("unknown key", "flush_intervall = 5\n" + GOOD, 2, "flush_intervall"),
    ("bad port range", '[[monitor]]\nname = "a"\nrules = [{ port = "90-80" }]\n', 2, "90-80"),
]  # fmt: skip


def run_daemon(pair: Pair, config: Path) -> subprocess.CompletedProcess[str]:
    """trafmetuxd --config in namespace a, to completion (bounded)."""
    return pair.a.run([PYTHON, "-m", "trafmetuxd", "--config", str(config)], check=False,
                      timeout=60)  # fmt: skip


def config_text(tmp: Path, state: Path, body: str) -> str:
    """A config whose socket and state live below tmp."""
    return f'state_dir = "{state}"\nsocket = "{tmp / "sock"}"\n{body}'


def test_invalid_configs_exit_2_naming_the_key_and_install_nothing(
    pair: Pair, tmp_path: Path
) -> None:
    for what, body, status, named in BAD:
        state = tmp_path / what.replace(" ", "-")
        config = tmp_path / "bad.toml"
        config.write_text(config_text(tmp_path, state, body))
        done = run_daemon(pair, config)
        assert done.returncode == status, (what, done.stderr)
        assert named in done.stderr and str(config) in done.stderr, (what, done.stderr)
        assert "TRAFMETUX" not in pair.a.iptables_save(), what
        assert not state.exists(), what  # nothing created, nothing metered


def test_unusable_state_dir_exits_naming_the_path_before_metering(
    pair: Pair, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    cases = [blocker / "state"]
    with tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=30)
        cases.append(ro)
        for state in cases:
            config = tmp_path / "t.toml"
            config.write_text(config_text(tmp_path, state, GOOD))
            done = run_daemon(pair, config)
            assert done.returncode in (1, 2), done.stderr
            assert str(state) in done.stderr, done.stderr
            assert "TRAFMETUX" not in pair.a.iptables_save()
            assert not (tmp_path / "sock").exists()
