"""Atomic file writes: outputs are either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
