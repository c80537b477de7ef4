"""A booted container: an overlay over the cached root, systemd-nspawn on a private network.

Every run gets a fresh writable layer over the cached root, so nothing a test does outlives it.
The container has its own network namespace (--private-network): the daemon inside sees only
the interfaces the test creates there, never this machine's. Commands run inside through
nsenter into the container's PID 1. close() halts the container, kills what is left by PID,
unmounts the overlay and removes the layer, on every path.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bootroot import CACHE, PATH, install_project

HALT_WAIT = 30.0
_NUMBERS = itertools.count()


class Container:
    """One booted container over the cached root; run commands in it, then close() it."""

    def __init__(self, lower: Path) -> None:
        self.name = f"tmx-boot-{os.getpid()}-{next(_NUMBERS)}"
        self.dir = CACHE / "runs" / self.name
        self.merged = self.dir / "merged"
        self.log = self.dir / "boot.log"
        self.lower = lower
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def prepare(self) -> None:
        """Mount the overlay and install the working tree as it is now (make is incremental)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub in ("upper", "work", "merged"):
            (self.dir / sub).mkdir(parents=True)
        options = f"lowerdir={self.lower},upperdir={self.dir}/upper,workdir={self.dir}/work"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)],
            check=True,
            timeout=30,
        )
        install_project(self.merged, self.dir / "install.log")

    def boot(self, timeout: float = 120.0) -> None:
        """Boot systemd in the container and wait until it has finished starting up."""
        argv = ["systemd-nspawn", "--quiet", "-D", str(self.merged), "--private-network", "-b"]
        argv += ["--register=no", "--keep-unit", "--console=pipe", f"--machine={self.name}"]
        with self.log.open("wb") as out:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        self.leader = self._find_leader(timeout)
        state = "offline"
        # 'offline' until systemd listens on its socket, or nothing at all (only "Failed to
        # connect to bus" on stderr) before its bus socket exists, which a loaded machine
        # makes likely; --wait then waits out the start-up.
        while state in ("offline", "") and time.monotonic() < deadline:
            time.sleep(0.2)
            wait = ["systemctl", "is-system-running", "--wait"]
            state = self.run(wait, check=False, timeout=timeout).stdout.strip()
        assert state in ("running", "degraded"), (state, self.boot_log())

    def _find_leader(self, timeout: float) -> int:
        """The container's PID 1, as this machine numbers it."""
        assert self.nspawn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.nspawn.poll() is None, f"systemd-nspawn exited: {self.boot_log()}"
            for pid in descendants(self.nspawn.pid):
                if namespace_pid(pid) == 1:
                    return pid
            time.sleep(0.1)
        raise AssertionError(f"the container's init did not start: {self.boot_log()}")

    def argv(self, cmd: Sequence[str], user: str = "") -> list[str]:
        """The command line that runs cmd inside the container (as user, else as root)."""
        enter = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w"]
        as_user = ["runuser", "-u", user, "--"] if user else []
        return [*enter, "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", *as_user, *cmd]

    def run(
        self, cmd: Sequence[str], *, user: str = "", check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run inside the container to completion; raise with its output when check fails."""
        result = subprocess.run(
            self.argv(cmd, user), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{list(cmd)} exited {result.returncode}: {result.stderr}")
        return result

    def sh(self, script: str, *, check: bool = True, timeout: float = 60.0) -> str:
        """Run a shell script inside the container as root; its stdout."""
        return self.run(["sh", "-ec", script], check=check, timeout=timeout).stdout

    def boot_log(self) -> str:
        """The last lines systemd-nspawn and the container's console wrote."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def close(self) -> None:
        """Halt (SIGTERM to nspawn), kill by PID what is left, unmount, remove the layer."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=HALT_WAIT)
            except subprocess.TimeoutExpired:
                if self.leader and namespace_pid(self.leader) == 1:
                    os.kill(self.leader, signal.SIGKILL)  # ends the container's PID namespace
                self.nspawn.kill()
                self.nspawn.wait(timeout=HALT_WAIT)
        if self.merged.is_mount():
            subprocess.run(["umount", str(self.merged)], check=False, timeout=60)
        if self.merged.is_mount():
            subprocess.run(["umount", "--lazy", str(self.merged)], check=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every process below pid (children first), from /proc/PID/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def namespace_pid(pid: int) -> int:
    """The process's PID in its own (innermost) PID namespace, or 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return 0
