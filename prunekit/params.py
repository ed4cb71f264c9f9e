"""Parameter specs: one declaration per parameter drives validation and the CLI.

A parameter is declared once, as a :class:`Param`, beside what takes it (scikit-learn's
``_parameter_constraints`` is the model)::

    @register("kmeans", params=(
        Param("k", "int", 24, "Number of clusters.", low=1),
        Param("spherical", "bool", True, "Spherical k-means ...", negation="euclidean"),
    ))

Methods, the trainer and sampler of the plug-in (``prunekit_lfm.specs``) and
``pk.stability`` (:data:`prunekit.flow.study.STABILITY_PARAMS`) declare theirs this way.
The library validates values against the spec (:func:`validate`, :meth:`Param.check`,
:func:`takes`; unknown name, type, range, choice) and the commands generate their options
from it (:func:`prunekit.cli.params.options_from`: help, default, choices, click type).

Errors name parameters for each caller: a :class:`ParamError` says ``k`` in the library
and ``--k`` on the command line (:meth:`ParamError.cli_message`, which the CLI calls with
the running command's own flags).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prunekit.errors import PrunekitError

KINDS = ("int", "float", "bool", "choice", "path", "str")
# Every int parameter also lies in int64: the arrays and libraries it reaches hold no more.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ParamError(PrunekitError):
    """A user error about parameters, worded for the library and for the command line.

    ``text`` is a template in ``str.format`` syntax: a named field stands for a parameter,
    ``{steps}``, or for a parameter with a value, ``{steps:60}`` (``{resume:=True}`` for a
    flag that takes none); positional fields ``{}`` take ``values``. ``str(error)`` names
    parameters as the library does (``steps``, ``steps=60``, ``resume=True``);
    :meth:`cli_message` names flags (``--steps``, ``--steps 60``, ``--resume``). ``cli``
    is another template for the command line where the sentence itself differs; ``flags``
    maps names whose flag is not ``--name-with-dashes`` (``from_file``: ``--from``).
    """

    def __init__(self, text: str, *values: Any, cli: str | None = None,
                 flags: Mapping[str, str] | None = None, param: Param | None = None) -> None:
        self.text, self.values, self.cli = text, values, cli
        self.flags = dict(flags or {})
        self.param = param
        super().__init__(_Words(None).format(text, *values))

    def cli_message(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with flags: those of ``flags`` (the running command's), then the error's
        own, then ``--name-with-dashes``."""
        return _Words({**self.flags, **(flags or {})}).format(self.cli or self.text, *self.values)

    def __reduce__(self) -> tuple:
        # as it is (a worker's error reaches the driver whole), not re-read as a template
        return _restore, (type(self), self.args, self.__dict__.copy())


def _restore(cls: type[ParamError], args: tuple, state: dict[str, Any]) -> ParamError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class _Name:
    def __init__(self, name: str) -> None:
        self.name = name


class _Words(string.Formatter):
    """Renders a ParamError template: parameter names (``flags`` None) or flags."""

    def __init__(self, flags: Mapping[str, str] | None) -> None:
        super().__init__()
        self.flags = flags

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        return args[key] if isinstance(key, int) else _Name(key)

    def format_field(self, value: Any, format_spec: str) -> str:
        if not isinstance(value, _Name):
            return super().format_field(value, format_spec)
        if self.flags is None:
            return value.name + ("" if not format_spec or format_spec[0] == "=" else "=") + format_spec
        flag = self.flags.get(value.name) or dashed(value.name)
        if format_spec.startswith("="):  # a flag that takes no value (--resume)
            return flag
        return flag + (f" {format_spec}" if format_spec else "")


def dashed(name: str) -> str:
    """The default flag of a parameter: ``--name-with-dashes``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Param:
    """One parameter: its name, kind, default and help, and what values it takes.

    ``kind`` is one of :data:`KINDS`. Numbers may be bounded by ``low``/``high``
    (inclusive; ``open_low``/``open_high`` make a bound exclusive). ``nullable``: ``None``
    is accepted and means "decided elsewhere". ``special``: strings accepted besides
    numbers (``sigma="auto"``). ``objects``: Python types the library accepts besides the
    CLI's value (a ``Scores`` for ``within``). ``multiple``: a sequence of such values (a
    tuple in the library; a repeatable option on the command line).

    The rest shapes the CLI option: ``flag``/``negation`` (``--from``;
    ``--spherical/--euclidean``), ``metavar``, ``show_default`` (``[default: ...]`` in
    ``--help``), ``cli_range`` (click itself refuses an int outside [low, high], with its
    own message) and ``dir_okay`` (a path may name a folder).
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
    open_high: bool = False
    multiple: bool = False
    metavar: str | None = None
    show_default: bool = True
    cli_range: bool = False
    dir_okay: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"Param {self.name}: a choice needs choices")

    @property
    def cli_flag(self) -> str:
        return self.flag or dashed(self.name)

    def describe(self) -> str:
        """What values are allowed, in words (used in errors and help)."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("int", "float"):
            text = ("an integer" if self.kind == "int" else "a number") + self._bounds()
            if self.special:
                text += " or " + ", ".join(repr(s) for s in self.special)
            return text
        return {"bool": "true or false", "path": "a file path", "str": "a string"}[self.kind]

    def _bounds(self) -> str:
        low, high = self.low, self.high
        if low is not None and high is not None:
            return (f" in {'(' if self.open_low else '['}{_num(low)}, "
                    f"{_num(high)}{')' if self.open_high else ']'}")
        if low is not None:
            return f" {'>' if self.open_low else '>='} {_num(low)}"
        if high is not None:
            return f" {'<' if self.open_high else '<='} {_num(high)}"
        return ""

    def error(self, problem: str, method: str | None = None) -> ParamError:
        """A ParamError saying ``problem`` about this parameter (of ``method``, if any)."""
        flags = {self.name: self.cli_flag}
        if method is None:
            return ParamError(f"{{{self.name}}} {{0}}.", problem, flags=flags, param=self)
        return ParamError(f"method '{{1}}': parameter {{{self.name}}} {{0}}.", problem, method,
                          cli=f"{{{self.name}}} {{0}} (method '{{1}}').", flags=flags,
                          param=self)

    def check(self, value: Any, method: str | None = None) -> Any:
        """The validated (and normalised) value, or a :class:`ParamError`."""
        if not self.multiple:
            return self._check_one(value, method)
        if value is None and self.nullable:
            return None
        if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Iterable):
            raise self.error(f"must be a list of values, each {self.describe()} "
                             f"(got {_show(value)})", method)
        return tuple(self._check_one(v, method) for v in value)

    def _check_one(self, value: Any, method: str | None) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise self.error(f"is required ({self.describe()})", method)
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
            raise self.error(f"must be a 64-bit integer, {side} (got {_show(value)})",
                             method) from None
        except _Bad:
            raise self.error(f"must be {self.describe()} (got {_show(value)})", method) from None


def seed_param(help: str = "Seed of every random choice.", default: int = 0) -> Param:  # noqa: A002
    """``seed``: an integer 0 <= seed < 2**63, the one rule of every command (see
    :mod:`prunekit.seeds`)."""
    return Param("seed", "int", default, help + " An integer in [0, 2**63).", low=0,
                 high=INT64_MAX, cli_range=True)


class _Bad(Exception):
    pass


class _Beyond64(_Bad):
    """An integer within the declared bounds but outside int64."""


def _num(v: float) -> str:
    if v == INT64_MAX:
        return "2**63 - 1"
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _in_range(p: Param, v: float) -> None:
    if p.low is not None and (v < p.low or (p.open_low and v == p.low)):
        raise _Bad
    if p.high is not None and (v > p.high or (p.open_high and v == p.high)):
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


def validate(method: str | None, spec: Iterable[Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of ``spec`` with its checked value (defaults for those not given).

    ``method``: the method the spec belongs to, named in the errors (None: no method).
    """
    names = {p.name: p for p in spec}
    unknown = sorted(set(given) - set(names))
    if unknown:
        takes_ = ", ".join(names) or "no parameters"
        who = f"method '{method}' has" if method else "there is"
        raise PrunekitError(f"{who} no parameter {', '.join(unknown)}; it takes: {takes_}.")
    out = {}
    for p in names.values():
        if p.name in given:
            out[p.name] = p.check(given[p.name], method)
        elif p.default is None and not p.nullable:
            raise p.error(f"is required: {p.help}", method)
        else:
            out[p.name] = p.default
    return out


def pick(spec: Iterable[Param], *names: str) -> tuple[Param, ...]:
    """The Params of ``spec`` called ``names``, in that order (a KeyError for a missing one)."""
    by_name = {p.name: p for p in spec}
    return tuple(by_name[n] for n in names)


def defaults(spec: Iterable[Param]) -> dict[str, Any]:
    """``{name: default}`` of a spec."""
    return {p.name: p.default for p in spec}


def check_defaults(fn: Callable[..., Any], spec: Iterable[Param]) -> None:
    """Each Param of ``spec`` is a keyword argument of ``fn`` with the Param's default (same
    value and type), else a ``TypeError``: a caller of ``fn`` and one of the spec's options
    get the same default, and the two cannot drift apart."""
    args = inspect.signature(fn).parameters
    where = f"{fn.__module__}.{fn.__qualname__}"
    for p in spec:
        arg = args.get(p.name)
        if arg is None or arg.kind not in (arg.KEYWORD_ONLY, arg.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{where} takes no keyword argument {p.name}, which its spec declares.")
        if arg.default is arg.empty or type(arg.default) is not type(p.default) \
                or arg.default != p.default:
            shown = "none" if arg.default is arg.empty else repr(arg.default)
            raise TypeError(f"{where}: parameter {p.name} defaults to {p.default!r} in its Param "
                            f"but to {shown} in the function; make them equal.")


def takes(spec: tuple[Param, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function whose keyword arguments ``spec`` declares: the values given are
    checked (and normalised) by their Params on every call, before the function runs, and
    the defaults are checked against the spec's at import (:func:`check_defaults`)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        check_defaults(fn, spec)
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            for p in spec:
                if p.name in bound.arguments:
                    bound.arguments[p.name] = p.check(bound.arguments[p.name])
            return fn(*bound.args, **bound.kwargs)

        checked.params = spec  # type: ignore[attr-defined]
        return checked

    return deco
