"""Content-addressed cache folders (the image store, the feature cache): built privately, published by a rename,
checked when opened, replaced when damaged, and never left half-written by a full disk.

* A folder is built in ``.<key>.tmp-<pid>@<host>`` beside its final name. A builder that died (killed, out of
  memory) leaves that folder behind; :func:`private_dir` removes such folders of dead processes of this host
  before building (:func:`medcli._cleanup.remove_stale_temps`).
* :func:`stamp` records a file's size and modification time when the folder is published; a cache whose
  file no longer has its stamp was changed after it was built and is not used (:func:`stamp_problem`).
* :func:`discard` moves a damaged or incomplete folder out of the way (renamed aside, then removed), so the
  rebuilt one can be published under the same name.
* :func:`reserve` checks the free space and preallocates a file before it is memory-mapped, so a full disk is
  an ``OSError`` (turned into :func:`no_space`'s one-line error) instead of a SIGBUS on the first page written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from .._cleanup import host_name, remove_stale_temps
from ..errors import MedcliError, free_bytes, human_bytes

log = logging.getLogger("medcli")

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def private_dir(final: Path) -> Path:
    """A fresh private sibling of ``final`` to build it in (``.<name>.tmp-<pid>@<host>``), after removing the
    private folders that dead builders of this host left in ``final``'s parent
    (:func:`medcli._cleanup.remove_stale_temps`; other hosts' are left alone)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent, recursive=False)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}@{host_name()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def stamp(path: Path) -> dict:
    """``{"size", "mtime_ns"}`` of ``path``: what :func:`stamp_problem` compares. Not the change time: ``chmod``
    (a cache made read-only to share it) and ``cp -a``/``rsync -a`` (a cache copied to a node's local disk) change
    it without touching the contents, and the cache would be rebuilt every time. (A write that restores the file's
    size and modification time on purpose is not caught; the data's own content hashes are checked separately.)"""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_problem(folder: Path, recorded: dict | None) -> str | None:
    """What differs between the files of ``folder`` and their ``recorded`` stamps (``{name: stamp}``), or None."""
    if not recorded:
        return "has no record of its files (built by an older medcli), so it cannot be checked"
    for name, want in recorded.items():
        try:
            have = stamp(folder / name)
        except OSError:
            return f"lacks {name}"
        if any(have[k] != want.get(k) for k in have):  # stamps recorded with a change time still compare on these two
            what = "size" if have["size"] != want["size"] else "modification time"
            return f"{name} was changed after the cache was built ({what} differs)"
    return None


def discard(final: Path) -> None:
    """Move the damaged or incomplete folder ``final`` aside and remove it (a reader that has its files open
    keeps reading them); nothing happens when another process removed it first."""
    aside = final.parent / f".{final.name}.bad-{os.getpid()}@{host_name()}"
    try:
        os.rename(final, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def no_space(cache_root: Path, what: str, exc: OSError | None = None, need: int | None = None) -> MedcliError:
    """The one-line error for a cache disk without room: names the cache folder, what was being written, and
    the fixes."""
    free = free_bytes(cache_root)
    room = "" if free is None else (f" ({human_bytes(need)} needed, {human_bytes(free)} free)" if need is not None else f" ({human_bytes(free)} free)")
    cause = f": {exc.strerror}" if exc is not None and exc.strerror else ""
    return MedcliError(
        f"{cache_root}: no space left in the cache folder for {what}{room}{cause}; free space there, or choose "
        "a cache folder on a disk with room with --cache-dir (or $MEDCLI_CACHE)"
    )


def check_space(cache_root: Path, need: int, what: str) -> None:
    """Raise :func:`no_space`'s error when the disk holding ``cache_root`` has less than ``need`` bytes (plus
    1 MiB for the small files beside them) free."""
    free = free_bytes(cache_root)
    if free is not None and free < need + (1 << 20):
        raise no_space(cache_root, what, need=need)


def reserve(path: Path, nbytes: int) -> None:
    """Allocate ``nbytes`` of ``path`` on disk now (``posix_fallocate``), so that writing a memory map of it can
    never fail later: a full disk raises ``OSError(ENOSPC)`` here instead of a SIGBUS on the first page written.
    File systems that cannot preallocate are left as they are."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise
        log.debug("%s: could not preallocate (%s)", path, exc)
    except AttributeError:  # pragma: no cover - not POSIX
        pass
    finally:
        os.close(fd)
