"""Parameter specs: one declaration per method parameter drives validation and the CLI.

A method declares its parameters beside its function (scikit-learn's
``_parameter_constraints`` is the model)::

    @register("kmeans", params=(
        Param("k", "int", 24, "Number of clusters.", low=1),
        Param("spherical", "bool", True, "Spherical k-means ...", negation="euclidean"),
    ))

:func:`prunekit.score` validates keyword arguments against the spec (unknown name, type,
range, choice) and ``prunekit score`` generates one ``--flag`` per parameter name. Library
errors name the parameter (``k``); :meth:`ParamError.cli_message` names the flag (``--k``).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

from prunekit.errors import PrunekitError

KINDS = ("int", "float", "bool", "choice", "path", "str")
# Every int parameter also lies in int64: the arrays and libraries it reaches hold no more.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ParamError(PrunekitError):
    """A method parameter with a bad value; knows the parameter so the CLI can name its flag."""

    def __init__(self, method: str, param: Param, problem: str) -> None:
        self.method, self.param, self.problem = method, param, problem
        super().__init__(f"method '{method}': parameter {param.name} {problem}.")

    def cli_message(self) -> str:
        return f"{self.param.cli_flag} {self.problem} (method '{self.method}')."


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    ``kind`` is one of :data:`KINDS`. Numbers may be bounded by ``low``/``high``
    (inclusive; ``open_low`` makes the lower bound exclusive). ``nullable``: ``None`` is
    accepted and means "the method decides". ``special``: strings accepted besides numbers
    (``sigma="auto"``). ``objects``: Python types the library accepts besides the CLI's
    value (a ``Scores`` for ``within``).
    ``flag``/``negation`` shape the CLI option (``--from``; ``--spherical/--euclidean``).
    """

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    special: tuple[str, ...] = ()
    objects: tuple[type, ...] = ()
    flag: str | None = None
    negation: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"Param {self.name}: a choice needs choices")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What values are allowed, in words (used in errors and help)."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.open_low else '>='} {_num(self.low)}")
            if self.high is not None:
                bounds.append(f"<= {_num(self.high)}")
            text = what + (" " + " and ".join(bounds) if bounds else "")
            if self.special:
                text += " or " + ", ".join(repr(s) for s in self.special)
            return text
        return {"bool": "true or false", "path": "a file path", "str": "a string"}[self.kind]

    def check(self, value: Any, method: str) -> Any:
        """The validated (and normalised) value, or a :class:`ParamError`."""
        if value is None:
            if self.nullable:
                return None
            raise ParamError(method, self, f"is required ({self.describe()})")
        if self.objects and isinstance(value, self.objects):
            return value
        if isinstance(value, str) and value in self.special:
            return value
        checker = {"int": _int, "float": _float, "bool": _bool, "choice": _choice,
                   "path": _path, "str": _str}[self.kind]
        try:
            return checker(self, value)
        except _Beyond64:
            side = "below 2**63" if int(value) > 0 else "at least -2**63"
            raise ParamError(method, self, f"must be a 64-bit integer, {side} "
                                           f"(got {_show(value)})") from None
        except _Bad:
            raise ParamError(method, self, f"must be {self.describe()} (got {_show(value)})") from None


class _Bad(Exception):
    pass


class _Beyond64(_Bad):
    """An integer within the declared bounds but outside int64."""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _in_range(p: Param, v: float) -> None:
    if p.low is not None and (v < p.low or (p.open_low and v == p.low)):
        raise _Bad
    if p.high is not None and v > p.high:
        raise _Bad


def _int(p: Param, value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad
    if not isinstance(value, (numbers.Integral, str)):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise _Bad
    try:
        v = int(value)
    except ValueError:
        raise _Bad from None
    _in_range(p, v)
    if not INT64_MIN <= v <= INT64_MAX:
        raise _Beyond64
    return v


def _float(p: Param, value: Any) -> float:
    if isinstance(value, bool):
        raise _Bad
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _Bad from None
    if not math.isfinite(v):
        raise _Bad
    _in_range(p, v)
    return v


def _bool(p: Param, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise _Bad


def _choice(p: Param, value: Any) -> str:
    if not isinstance(value, str) or value not in p.choices:
        raise _Bad
    return value


def _path(p: Param, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise _Bad
    return os.fspath(value)


def _str(p: Param, value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad
    return value


def validate(method: str, spec: tuple[Param, ...], given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of ``spec`` with its checked value (defaults for those not given)."""
    names = {p.name: p for p in spec}
    unknown = sorted(set(given) - set(names))
    if unknown:
        takes = ", ".join(names) or "no parameters"
        raise PrunekitError(
            f"method '{method}' has no parameter {', '.join(unknown)}; it takes: {takes}."
        )
    out = {}
    for p in spec:
        if p.name in given:
            out[p.name] = p.check(given[p.name], method)
        elif p.default is None and not p.nullable:
            raise ParamError(method, p, f"is required: {p.help}")
        else:
            out[p.name] = p.default
    return out
