"""Atomic file writes: outputs are either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import write_error


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is removed whatever happens. A write the file system refuses (no space left, quota,
    read-only, permission denied; in the block or in creating the folder, the temporary file or the rename) is
    raised as :class:`medcli.errors.WriteError` naming ``path`` (see :func:`medcli.errors.write_error`, which
    also recognises ``torch.save``'s own write failures on a full disk); other errors pass unchanged.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # `.<name>.tmp-<pid>.<random>`: a kill leaves a name the next training start attributes to a dead process
        # and removes (medcli._cleanup)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}.", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        error = write_error(exc, path)  # before the temporary file goes: a full disk is still full
        if error is None:
            raise
        raise error from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_path`), flushed to the disk before the rename.

    The file is written through a Python file object, so a failed write is an ``OSError`` with its errno (a path
    string would be written by torch's C++ stream, whose failure says only ``basic_ios::clear: iostream
    error``). Returns ``path``. Raises :class:`medcli.errors.WriteError` naming ``path`` when the disk is full,
    the quota exceeded, the folder read-only or not writable; nothing is left at ``path`` then.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    from .errors import MedcliError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedcliError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise MedcliError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); regenerate it") from None


def staging_dir(final: str | os.PathLike) -> Path:
    """A private sibling of ``final`` to build it in: ``.<name>.tmp-<pid>`` (removed first if left over)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike, marker: str | None = None, *, replace: bool = False) -> None:
    """Rename a completely written folder ``tmp`` into place as ``final``.

    Two cases, one function:

    * ``replace=False`` (caches: the image store, the feature cache): ``final`` is content-addressed, so an
      existing one is as good as ours. ``marker`` is the file written last inside it; if another process
      published ``final`` first (the rename fails and ``final/marker`` exists), its folder is kept and ours is
      left for the caller to delete. Any other failure raises ``OSError``.
    * ``replace=True`` (outputs that a rerun replaces, e.g. a run's ``gradcam/<split>/``): an existing
      ``final`` is renamed aside (``.<name>.old-<pid>``), ``tmp`` renamed in, and the old folder removed; if
      the rename fails the old folder is put back and the ``OSError`` raised. ``final`` never holds a mix of
      the two.
    """
    final = Path(final)
    if replace:
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            if old.exists() and not final.exists():
                os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if marker is None or not (final / marker).exists():
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
