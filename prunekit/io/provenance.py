"""Provenance attributes carried by every HDF5 file prunekit writes."""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from prunekit._version import __version__
from prunekit.errors import PrunekitError


def jsonable(value: Any) -> Any:
    """Plain JSON types for numpy scalars/arrays, tuples, dicts and paths (``str``).

    The one conversion used for file attributes and for every JSON report. Non-finite
    floats, which strict JSON cannot hold, become ``None`` (NaN) or ``"inf"``/``"-inf"``.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):  # dicts and report objects that read like one
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def params_json(params: dict[str, Any]) -> str:
    """Canonical JSON of parameters (sorted keys, so the same params give the same bytes)."""
    return json.dumps(jsonable(params), sort_keys=True)


def stamp(attrs: Any, params: dict[str, Any], command: list[str] | None = None) -> None:
    """Write ``prunekit_version``, ``created``, ``command`` and ``params`` onto ``attrs``.

    ``command`` defaults to ``sys.argv`` (the CLI's argv; a Python caller's script).
    """
    attrs["prunekit_version"] = __version__
    attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs["command"] = json.dumps(list(sys.argv if command is None else command))
    attrs["params"] = params_json(params)


def read_params(attrs: Any, where: str = "file") -> dict[str, Any]:
    """The ``params`` attribute as a dict (empty when absent); malformed JSON is an error."""
    raw = attrs.get("params")
    if raw is None:
        return {}
    try:
        if isinstance(raw, bytes):
            raw = raw.decode()
        out = json.loads(raw)
    except (TypeError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise PrunekitError(
            f"{where}: attribute 'params' is not valid JSON ({str(exc)[:80]}); rewrite the file with prunekit."
        ) from exc
    if not isinstance(out, dict):
        raise PrunekitError(f"{where}: attribute 'params' must be a JSON object, got {type(out).__name__}.")
    return out
