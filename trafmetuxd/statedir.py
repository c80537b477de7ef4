"""Start-up checks of the directories the daemon writes: nobody else may write them.

A user who may write the state directory can put a symlink where the database or a flow log
goes and have the daemon (root, say) create or append to a file of their choice. The files
are opened without following symlinks, and the directories they live in must be writable by
the daemon's user alone (or root), so nobody can swap a name under them either.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

from trafmetuxd.spec import Config


class UnsafeDirectoryError(OSError):
    """A directory the daemon writes is writable by someone else; the message says who."""


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"gid {gid}"


def problem(st: os.stat_result, uid: int) -> str:
    """Why a directory with this stat is unsafe for a daemon running as uid ('' when safe)."""
    if st.st_uid not in (uid, 0):
        return f"owned by {_user(st.st_uid)}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by its group or by everyone"
    return ""


def check_directory(path: Path, uid: int) -> None:
    """Refuse a directory someone but uid (or root) may write; the error says why."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        st = path.stat()  # a symlink the admin made to the real directory: check that one
    why = problem(st, uid)
    if why:
        raise UnsafeDirectoryError(
            f"{path}: {why} (mode {stat.S_IMODE(st.st_mode):04o}, owner {_user(st.st_uid)}, "
            f"group {_group(st.st_gid)}); the daemon (running as {_user(uid)}) writes here, so "
            f"only it may: chown it to {_user(uid)} and chmod go-w"
        )


def nearest_existing(path: Path) -> Path:
    """path itself if it exists, else its closest existing ancestor (where it will be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def flow_log_directory(pattern: str) -> Path:
    """The part of a flow log pattern's directory that does not depend on the time."""
    fixed = list(Path(pattern).parent.parts)
    for index, part in enumerate(fixed):
        if "%" in part:
            return Path(*fixed[:index])
    return Path(*fixed)


def written_directories(cfg: Config) -> Iterable[Path]:
    """Every directory the daemon creates files in, as far as known at start."""
    yield cfg.state_dir
    for monitor in cfg.monitors:
        if monitor.flow_log:
            yield nearest_existing(flow_log_directory(monitor.flow_log))


def check(cfg: Config, uid: int | None = None) -> None:
    """Refuse to start when another user may write the state or a flow log directory."""
    uid = os.geteuid() if uid is None else uid
    for directory in dict.fromkeys(written_directories(cfg)):
        check_directory(directory, uid)
