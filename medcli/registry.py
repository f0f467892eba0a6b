"""One name -> entry table, shared by the backbone, head, strategy and CAM-method registries.

Each registry module keeps its own public functions (``register_head``, ``list_heads``, ``get_head``, ...) as
one-line wrappers, so adding an entry stays one call plus a test.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import MedcliError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name. ``kind`` names them in messages; ``sort`` lists names sorted, else in registration order."""

    def __init__(self, kind: str, *, sort: bool = True) -> None:
        self.kind = kind
        self.sort = sort
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, overwrite: bool = False) -> T:
        """Register ``entry`` under ``name`` (``overwrite=True`` replaces an entry of that name)."""
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries) if self.sort else list(self._entries)

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is a user error that lists the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise MedcliError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}") from None
