"""A minimal Debian 12 root with the project installed as the README says, built once and cached.

The root is made with debootstrap from the machine's own Debian mirror, then the working tree
(HEAD plus uncommitted changes, never the .venv) is copied to /usr/local/src/trafmetux inside it
and `make install install-systemd` runs there in a chroot. It is cached under CACHE, keyed by a
hash of the package list, the mirror and the project's install inputs, and rebuilt when any of
them changes; a cached root of other inputs is removed once unused for six hours.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path("/var/cache/trafmetux-test")
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# Beyond the Makefile's DEB_PACKAGES: an init to boot, a bus for systemctl, traffic, TLS for pip.
BOOT_PACKAGES = ("systemd-sysv", "dbus", "iputils-ping", "ca-certificates")
# What decides what `make install install-systemd` puts into the root (besides the packages).
INSTALL_INPUTS = ("Makefile", "pyproject.toml", "setup.py", "tests/system/bootroot.py")
SRC = "usr/local/src/trafmetux"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "unshare", "chroot", "git", "tar")


KEEP_UNUSED = 6 * 3600  # seconds a root of other inputs is kept after its last use


def deb_packages() -> list[str]:
    """The Makefile's DEB_PACKAGES, continuation lines joined."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^DEB_PACKAGES\s*:?=(.*)$", text, re.MULTILINE)
    assert match is not None, "DEB_PACKAGES missing from the Makefile"
    return match.group(1).split()


def packages() -> list[str]:
    """Every package the root gets, sorted so that the cache key is stable."""
    return sorted({*deb_packages(), *BOOT_PACKAGES})


def mirror(sources: Path = SOURCES) -> str:
    """The first URI of the machine's deb822 stanza for SUITE, else Debian's default mirror."""
    if not sources.exists():
        return DEFAULT_MIRROR
    for stanza in sources.read_text().split("\n\n"):
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
        if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
            return fields["URIs"].split()[0]
    return DEFAULT_MIRROR


def cache_key() -> str:
    """Hash of the package list, the mirror and the install inputs."""
    digest = hashlib.sha256()
    for part in (SUITE, mirror(), *packages()):
        digest.update(part.encode() + b"\0")
    for name in INSTALL_INPUTS:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def tree_files() -> list[str]:
    """The working tree's files: tracked (as they are now) and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and os.path.lexists(ROOT / name)]


def copy_tree(dest: Path) -> None:
    """Copy the working tree into dest, keeping mtimes (make then rebuilds only what changed)."""
    dest.mkdir(parents=True, exist_ok=True)
    pack = subprocess.Popen(
        ["tar", "-C", str(ROOT), "--null", "-T", "-", "-cf", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    unpack = subprocess.Popen(["tar", "-C", str(dest), "-xf", "-"], stdin=pack.stdout)
    assert pack.stdin is not None and pack.stdout is not None
    pack.stdout.close()
    pack.stdin.write("\0".join(tree_files()).encode())
    pack.stdin.close()
    assert pack.wait(timeout=120) == 0 and unpack.wait(timeout=120) == 0, "copying the tree"


def run_logged(argv: Sequence[str], log: Path, what: str, timeout: float) -> None:
    """Run with output appended to log; on failure raise with the log's tail."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}, log {log}):\n{tail}")


def chroot_argv(root: Path, command: str) -> list[str]:
    """Run a shell command chrooted into root, with /proc, /dev and /sys in a private mount
    namespace: the mounts vanish with the command, on every path."""
    inner = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        f"mount -t sysfs sys {root}/sys && exec chroot {root} /usr/bin/env -i PATH={PATH} "
        f"HOME=/root LANG=C.UTF-8 PIP_CERT={CA_BUNDLE} PIP_DISABLE_PIP_VERSION_CHECK=1 "
        f"sh -c '{command}'"
    )
    return ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", inner]


def install_project(root: Path, log: Path) -> None:
    """Copy the working tree into root and run `make install install-systemd` there.

    The chroot shares this machine's network (pip needs it) but starts nothing: no daemon and
    no rule. The root trusts the CAs this machine trusts (a TLS-intercepting proxy's too).
    """
    shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))
    copy_tree(root / SRC)
    command = f"cd /{SRC} && make install install-systemd"
    run_logged(chroot_argv(root, command), log, "make install install-systemd in the root", 1200)


def debootstrap(root: Path, log: Path) -> None:
    """A minimal bookworm with every package the project and the boot test need."""
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages())}"]
    run_logged([*argv, SUITE, str(root), mirror()], log, "debootstrap", 1500)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time (two test runs may start together)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_root() -> Path:
    """The cached root for today's inputs, built first when it is missing."""
    with _locked():
        root = CACHE / f"{SUITE}-{cache_key()}"
        if not root.is_dir():
            _build(root)
        os.utime(root)  # in use: kept by the clean-up of other builds for a while
        return root


def _build(root: Path) -> None:
    """Build into a temporary directory, then move it into place and drop older roots."""
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    log = CACHE / f"{root.name}.log"
    log.write_text("")
    debootstrap(building, log)
    install_project(building, log)
    building.rename(root)
    # Roots of other inputs go once unused for a while: two checkouts testing side by side
    # (a branch and main) must not remove the root the other one is booting from.
    stale = time.time() - KEEP_UNUSED
    for old in CACHE.glob(f"{SUITE}-*"):
        if old in (root, log) or old.stat().st_mtime > stale:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
