"""Temporary files and folders left by killed processes: named after their writer, removed at the next start.

A write that is interrupted (a kill, a crash, a lost node) leaves its temporary file or folder behind: a resume
checkpoint's is as big as the model. Writers that put their process id into the name let a later process tell a
leftover from a write in progress:

* ``.<name>.tmp-<pid>`` / ``.<name>.tmp-<pid>.<anything>``: a temporary file or folder (:func:`medcli._io.atomic_path`
  and :func:`medcli._io.save_torch`, :func:`medcli._io.staging_dir`, the links of :mod:`medcli.training.cells`);
* ``.<name>.old-<pid>``: a folder renamed aside while a new one is swapped in (:func:`medcli._io.publish_dir`);
* ``.<name>.tmp-<pid>@<host>`` / ``.<name>.bad-<pid>@<host>``: a cache folder being built, or a damaged one being
  removed (:mod:`medcli.data._cachedir`: caches may be shared by several machines, so their names say which).

:func:`remove_stale_temps` removes those whose process is gone (checked on this machine: a name of another host is
left alone; a run folder is only written by one job at a time, which the workflow guarantees for its outputs), and
temporaries without a process id
(``.<name>.<8 characters>.tmp``, from medcli versions before process ids were in the names) once they are older
than :data:`UNNAMED_MAX_AGE` seconds: no write takes that long.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger("medcli")

#: Age (seconds) after which a temporary file without a process id in its name is taken as a leftover.
UNNAMED_MAX_AGE = 3600

_PID_TEMP = re.compile(r"^\..+\.(?:tmp|old|bad)-(?P<pid>\d+)(?:@(?P<host>[^/]+)|\..*)?$")
_UNNAMED_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of medcli's temporary names (with or without a process id)."""
    return bool(_PID_TEMP.match(name) or _UNNAMED_TEMP.match(name))


def host_name() -> str:
    """This machine's name as temporary names carry it (``@<host>``)."""
    return socket.gethostname().replace("/", "_")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep it
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file or folder of a write that will never finish (see the module docstring)."""
    m = _PID_TEMP.match(path.name)
    if m:
        return (m["host"] is None or m["host"] == host_name()) and not pid_alive(int(m["pid"]))
    if _UNNAMED_TEMP.match(path.name):
        try:
            age = (time.time() if now is None else now) - path.lstat().st_mtime
        except FileNotFoundError:
            return False
        return age > UNNAMED_MAX_AGE
    return False


def remove_stale_temps(folder: str | os.PathLike, *, recursive: bool = True, prefix: str = "") -> list[Path]:
    """Remove the stale temporary files and folders directly in ``folder`` (and, with ``recursive``, in its
    sub-folders) whose names start with ``prefix``; returns what was removed. A missing ``folder`` is nothing to
    clean. Never raises for a file that another process removes at the same time."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        if is_stale(entry):
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the leftover %s (%s)", entry, exc)
        elif recursive and entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
            removed += remove_stale_temps(entry, recursive=True)
    if removed:
        log.info("removed %d leftover temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed
