"""A result object that reads like the dict of its ``to_dict()``."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any


class DictLike(Mapping):
    """``obj[key]``, ``iter(obj)``, ``len(obj)`` (and so ``dict(obj)``, ``obj == a_dict``)
    read :meth:`to_dict`; each read builds the dict anew, so hold ``to_dict()`` to reuse it."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The object as plain JSON-ready values."""

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
