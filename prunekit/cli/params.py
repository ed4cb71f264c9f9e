"""Click options generated from parameter specs, and errors worded with the command's flags.

A command declares no option a :class:`~prunekit.params.Param` already describes: it asks
:func:`options_from` for them (help, default, choices, click type, flag pair, repeats),
so the library's validation and the command line's options come from one declaration.
:func:`user_message` words a library error for the command line: a
:class:`~prunekit.params.ParamError` names the running command's flags (``--k``) and
arguments (``DATA``) where the library named parameters (``k``, ``data``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from prunekit.params import Param, ParamError

_SAME: Any = object()


def click_type(p: Param) -> click.ParamType:
    """The click type of one value of ``p`` (numbers with special words, and repeated
    numbers that also come as comma lists, are text: the spec or the command parses them)."""
    if p.kind == "choice":
        return click.Choice(p.choices)
    if p.kind == "path":
        return click.Path(dir_okay=p.dir_okay)
    if p.kind in ("int", "float") and (p.special or p.multiple):
        return click.STRING
    if p.kind == "int":
        if p.cli_range and (p.low is not None or p.high is not None):
            return click.IntRange(p.low, p.high, min_open=p.open_low, max_open=p.open_high)
        return click.INT
    if p.kind == "float":
        return click.FLOAT
    return click.STRING


def option(p: Param, *, help: str | None = None, default: Any = _SAME) -> click.Option:  # noqa: A002
    """The click option of ``p``; ``help``/``default`` replace the Param's (``score`` tags
    its help with the methods and passes ``default=None`` to see which options were given)."""
    text = p.help if help is None else help
    value = p.default if default is _SAME else default
    common: dict[str, Any] = {"help": text or None, "metavar": p.metavar}
    if p.kind == "bool" and p.negation:
        return click.Option([f"{p.cli_flag}/--{p.negation}", p.name], default=value,
                            show_default=p.show_default and value is not None, **common)
    if p.kind == "bool":
        return click.Option([p.cli_flag, p.name], is_flag=True, default=value, **common)
    show = p.show_default and value is not None and not p.multiple
    return click.Option([p.cli_flag, p.name], type=click_type(p), default=value,
                        multiple=p.multiple, show_default=show, **common)


def options_from(params: Iterable[Param], **overrides: Any) -> Callable[[Callable], Callable]:
    """A decorator adding one option per Param of ``params`` (first listed = first in
    ``--help``); ``overrides`` go to every :func:`option`."""
    params = tuple(params)

    def deco(fn: Callable) -> Callable:
        for opt in reversed([option(p, **overrides) for p in params]):  # as stacked decorators
            if isinstance(fn, click.Command):
                fn.params.append(opt)
            else:
                fn.__dict__.setdefault("__click_params__", []).append(opt)
        return fn

    return deco


def flags_of(command: click.Command | None) -> dict[str, str]:
    """``{parameter name: how the command line spells it}``: an option's long flag
    (``--n-sources``), an argument's metavar (``DATA``)."""
    if command is None:
        return {}
    out = {}
    for param in command.params:
        if param.name is None:
            continue
        if isinstance(param, click.Argument):
            out[param.name] = param.metavar or param.name.upper()
            continue
        longs = [o for o in param.opts if o.startswith("--")] or list(param.opts)
        out[param.name] = longs[0]
    return out


def user_message(exc: Exception, command: click.Command | None) -> str:
    """The message the command line prints for ``exc`` (flags for a ParamError)."""
    if isinstance(exc, ParamError):
        return exc.cli_message(flags_of(command))
    return str(exc)
