"""The control socket's file: created with its mode and group, replaced only when stale."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (capped by somaxconn)


def resolve_group(name: str) -> tuple[int, bool]:
    """(gid, found): the socket group's gid, or the process's own gid when it does not exist."""
    try:
        return grp.getgrnam(name).gr_gid, True
    except KeyError:
        log.warning("socket group %r does not exist; socket group is gid %d", name, os.getgid())
        return os.getgid(), False


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def clear_stale(path: Path) -> None:
    """Remove an existing socket file nobody answers on; refuse anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    if _answers(path):
        raise OSError(f"another process answers on {path}; is trafmetuxd already running?")
    path.unlink()


def bind_socket(path: Path, gid: int) -> socket.socket:
    """A listening socket at path with mode 0660 and the given group.

    chown/chmod by path follow a symlink another user may put there between bind and chmod,
    and fchmod on a socket's fd does not reach its file: so the socket is bound in a private
    directory (0700, ours) where nobody else can swap the file, given its group and mode there,
    and only then linked into place. link() never replaces what is at path.
    """
    clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    private = Path(tempfile.mkdtemp(prefix=".trafmetuxd-", dir=path.parent))
    staged = private / "s"
    try:
        sock.bind(str(staged))
        os.chown(staged, -1, gid)
        os.chmod(staged, SOCKET_MODE)
        _link(staged, path)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        private.rmdir()
    return sock


def _link(staged: Path, path: Path) -> None:
    """Give the staged socket its public name; refuse if something took that name meanwhile."""
    try:
        os.link(staged, path)
    except FileExistsError:
        msg = f"{path} appeared while the socket was created; refusing to replace it"
        raise OSError(msg) from None


def remove_socket(path: Path) -> None:
    """Remove the socket file, if it is still there and still a socket."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
