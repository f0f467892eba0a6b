"""The one exception type users see as a clean, one-line message.

Library code raises :class:`MedcliError` for every problem caused by the input (a bad file, a wrong key, an
impossible option combination). The CLI turns it into ``error: <message>`` on stderr and exit code 1, without a
traceback. Anything else is a bug in medcli and keeps its traceback.
"""

from __future__ import annotations

import errno as _errno
import os as _os


class MedcliError(Exception):
    """A problem with the user's input; the message names the file/key and the fix."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (an exception's message, perhaps over several lines) as one line of at most ``limit`` characters,
    for quoting a library's error inside a :class:`MedcliError`."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- files and folders that cannot be written ---------------------------------------------------------------------

#: The errnos of a file system refusing a write: the disk or quota is full, it is mounted read-only, or the user
#: may not write there. Only these become one-line errors; any other ``OSError`` keeps its traceback.
WRITE_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS, _errno.EACCES})

#: What ``torch.save`` raises when its C++ writer fails (disk full, quota) without a Python ``OSError`` behind it:
#: a path string is written by a C++ stream (``basic_ios::clear: iostream error``, ``file write failed``), a file
#: object ends with a short zip archive (``unexpected pos``).
TORCH_WRITE_FAILURES = ("iostream error", "file write failed", "unexpected pos")

#: A folder with less free space than this after a write failed is taken to be full.
FULL_BELOW = 1 << 20

_FIX = "or point --out/--work/--cache-dir elsewhere"


class WriteError(MedcliError, OSError):
    """A file or folder that could not be written: no space left, quota exceeded, read-only file system, or
    permission denied. A :class:`MedcliError` (the CLI prints one line, without a traceback) and an ``OSError``
    (``errno``, ``filename``), so code that tolerates a failed write with ``except OSError`` still does."""

    def __init__(self, errno: int, path: str | _os.PathLike, message: str):
        OSError.__init__(self, errno, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def write_error(exc: BaseException, path: str | _os.PathLike | None = None) -> WriteError | None:
    """``exc`` as a :class:`WriteError` if it is a refused write, else None (a bug or another problem).

    A refused write is an ``OSError`` with an errno of :data:`WRITE_ERRNOS`, found in ``exc`` or the exceptions it
    was raised from (``torch.save`` raises a ``RuntimeError`` while the ``OSError`` of the write is its context).
    With ``path`` (the file being written), a ``RuntimeError`` of ``torch.save``'s own writer
    (:data:`TORCH_WRITE_FAILURES`) also is one when the disk holding ``path`` is full now. The message names the
    ``OSError``'s own file when it has one other than a temporary file, else ``path``.
    """
    if isinstance(exc, WriteError):
        return exc
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
            name = cause.filename
            if path is not None and (name is None or _is_temporary(name)):
                name = path
            return WriteError(cause.errno, name or "", write_message(cause.errno, name))
        cause = cause.__cause__ or cause.__context__
    if path is not None and isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_WRITE_FAILURES):
        free = free_bytes(path)
        if free is not None and free < FULL_BELOW:
            return WriteError(_errno.ENOSPC, path, write_message(_errno.ENOSPC, path))
    return None


def write_message(errno: int, path: str | _os.PathLike | None) -> str:
    """The one-line message of a refused write of ``path``: what happened, where, and the fix."""
    where = f"{path}: " if path else ""
    if errno in (_errno.ENOSPC, _errno.EDQUOT):
        what = "no space left on the disk" if errno == _errno.ENOSPC else "disk quota exceeded"
        free = free_bytes(path) if path else None
        room = f" ({human_bytes(free)} free)" if free is not None else ""
        return f"{where}cannot write: {what}{room}; free space there {_FIX}"
    if errno == _errno.EROFS:
        return f"{where}cannot write: read-only file system; {_FIX.removeprefix('or ')}"
    return f"{where}cannot write: permission denied; make it writable for you {_FIX}"


def free_bytes(path: str | _os.PathLike) -> int | None:
    """Bytes free for this user on the file system of ``path`` (or of its nearest existing folder); None when
    that cannot be told."""
    try:
        st = _os.statvfs(existing_ancestor(path))
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    return st.f_bavail * st.f_frsize


def existing_ancestor(path: str | _os.PathLike) -> str:
    """``path`` if it exists, else its nearest existing parent folder (the one a write would happen in)."""
    path = _os.path.abspath(path)
    while not _os.path.lexists(path) and _os.path.dirname(path) != path:
        path = _os.path.dirname(path)
    return path


def human_bytes(n: float) -> str:
    """``n`` bytes as ``812 KB``, ``45 MB``, ``1.2 GB`` (powers of 1000, as ``df -H``)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            break
        n /= 1000
    else:
        unit = "TB"
    return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 10 else f"{n:.1f} {unit}"


def _is_temporary(name: object) -> bool:
    """A temporary file of :func:`medcli._io.atomic_path` (:func:`medcli._cleanup.is_temp_name`): the final name
    says more."""
    from ._cleanup import is_temp_name

    return is_temp_name(_os.path.basename(str(name)))
