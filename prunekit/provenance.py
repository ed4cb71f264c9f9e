"""Provenance attributes carried by every HDF5 file prunekit writes."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from typing import Any

import numpy as np

from . import __version__


def _jsonable(value: Any) -> Any:
    """Make numpy scalars/arrays and paths JSON-serialisable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def params_json(params: dict[str, Any]) -> str:
    """Canonical JSON of parameters (sorted keys, so the same params give the same bytes)."""
    return json.dumps(_jsonable(params), sort_keys=True)


def stamp(attrs: Any, params: dict[str, Any], command: list[str] | None = None) -> None:
    """Write ``prunekit_version``, ``created``, ``command`` and ``params`` onto ``attrs``.

    ``command`` defaults to ``sys.argv`` (the CLI's argv; a Python caller's script).
    """
    attrs["prunekit_version"] = __version__
    attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs["command"] = json.dumps(list(sys.argv if command is None else command))
    attrs["params"] = params_json(params)


def read_params(attrs: Any) -> dict[str, Any]:
    """The ``params`` attribute as a dict (empty when absent)."""
    raw = attrs.get("params")
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw)
