"""A JSON file of numbers read as a stream: the items of a top-level array, or the
``(key, value)`` pairs of a top-level object, in batches, in bounded memory.

The file is read :data:`CHUNK_BYTES` at a time and decoded as UTF-8 incrementally; each key
and value is decoded by ``json.JSONDecoder().raw_decode`` once its text is whole in the
window, so every value reads as ``json.load`` reads it (escapes, exponents, ``-0``,
``NaN``/``Infinity``, integers converted to float64). Memory is the window (one chunk, or
the longest token), the items decoded from it and one batch, whatever the size of the file.

What ``json.load`` refuses is refused, with a :class:`~prunekit.errors.PrunekitError` that
names the file, the byte offset and the item: a file that is not UTF-8, starts with a byte
order mark, is empty, holds a scalar, is cut short or has data after its closing bracket.
Values must be numbers: a nested array or object is refused where it starts; a string,
``true``, ``false``, ``null`` or an integer beyond float64 is named once the rest of the
file has parsed, so a file that is not valid JSON is refused as such first, as a whole-file
read would. Duplicate keys are all yielded, in file order (``json.load`` would keep the
last): the caller, which matches them as ids, refuses them.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from prunekit.errors import PrunekitError

CHUNK_BYTES = 1 << 20  # bytes read at a time
BATCH_ROWS = 1 << 16  # items a batch holds
SHAPE = "a JSON object {id: score} or a list of scores"
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace: nothing else (not str.isspace)
_SCALAR_END = re.compile(r"[^0-9A-Za-z+.\-]")  # a char no number or literal holds
_DECODER = json.JSONDecoder()
_PAIRS = json.JSONDecoder(object_pairs_hook=list)  # keeps duplicate keys, in order
# Runs of plain items: numbers (and whitespace, commas) only, keys without escapes or
# control characters. A run is cut at its last comma, so its items are whole in the window,
# and decoded in one call; json itself then checks that the run is valid.
_NUMBERS = r"[0-9eE.+\- \t\n\r]*,"
_ARRAY_RUN = re.compile(r"[0-9eE.+\- \t\n\r,]*,")
_OBJECT_RUN = re.compile(rf'(?:[ \t\n\r]*"[^"\\\x00-\x1f]*"[ \t\n\r]*:{_NUMBERS})+')


def json_kind(path: str | os.PathLike) -> str:
    """``"array"`` or ``"object"``: what the file holds at its top level (only its first
    bytes are read). A file that holds neither is refused."""
    with _open(path) as fh:
        return _Parser(fh, path, CHUNK_BYTES).start()


def json_batches(path: str | os.PathLike, rows: int = BATCH_ROWS,
                 chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[np.ndarray | None, np.ndarray]]:
    """``(ids, float64 values)`` of ``rows`` items at a time (the last batch fewer; none for
    an empty array or object), in file order. ``ids`` is an object array of the keys' ``str``
    for an object, None for an array. A file that is not valid JSON is refused where it
    goes wrong, after the batches before; a value that is not a number ends the batches and
    is refused once the rest of the file has parsed."""
    with _open(path) as fh:
        parser = _Parser(fh, path, chunk_bytes)
        keyed = parser.start() == "object"
        keys: list[str] = []
        values: list[float] = []
        for more_keys, more_values in parser.items():
            if keyed:
                keys += more_keys
            values += more_values
            done = 0
            while len(values) - done >= rows:
                yield _batch(keys[done : done + rows], values[done : done + rows], keyed)
                done += rows
            keys, values = keys[done:], values[done:]
        if values:
            yield _batch(keys, values, keyed)


def _batch(keys: list, values: list, keyed: bool) -> tuple[np.ndarray | None, np.ndarray]:
    ids = None
    if keyed:
        ids = np.empty(len(keys), dtype=object)
        ids[:] = keys
    return ids, np.array(values, dtype=np.float64)


def _open(path: str | os.PathLike) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise PrunekitError(f"cannot read {path}: {exc.strerror}.") from None


class _Parser:
    """A window ``buf`` of the file's text from ``pos`` on; ``base`` is the byte offset of
    ``buf[0]``. A token is decoded only once it ends inside the window, so a read boundary
    never splits one; its start stays at ``pos`` until it is whole."""

    def __init__(self, fh: BinaryIO, path: str | os.PathLike, chunk_bytes: int) -> None:
        self.fh, self.path, self.chunk = fh, path, max(1, int(chunk_bytes))
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.base, self.read, self.eof = "", 0, 0, 0, False
        self.close = "]"
        self.problem: PrunekitError | None = None  # the first value that is not a number

    # -- the window ---------------------------------------------------------------------

    def more(self) -> bool:
        """Drop the text before ``pos`` and read until the rest at least doubles (so a long
        token is scanned O(log) times) or the file ends; False when nothing was added."""
        if self.eof:
            return False
        self.base += len(self.buf[: self.pos].encode("utf-8"))
        self.buf, self.pos = self.buf[self.pos :], 0
        held, want = len(self.buf), max(len(self.buf), 1)
        while not self.eof and len(self.buf) - held < want:
            data = self.fh.read(self.chunk)
            cut = len(self.decoder.getstate()[0])  # bytes of a character split by the read
            try:
                self.buf += self.decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                at = self.read - cut + exc.start
                raise PrunekitError(f"{self.path} is not UTF-8 text ({exc.reason} at byte {at}); "
                                    "save the JSON as UTF-8.") from None
            self.read += len(data)
            self.eof = not data
        return len(self.buf) > held

    def offset(self, i: int | None = None) -> int:
        """The byte offset of ``buf[i]`` (default ``pos``)."""
        return self.base + len(self.buf[: self.pos if i is None else i].encode("utf-8"))

    def peek(self) -> str | None:
        """The next character after whitespace (``pos`` moved to it); None at the end."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return None

    # -- errors -------------------------------------------------------------------------

    def invalid(self, what: str, n: int, i: int | None = None) -> PrunekitError:
        return PrunekitError(
            f"{self.path} is not valid JSON: {what} at byte {self.offset(i)} (after "
            f"{_count(n)}); fix the file, e.g. write it with json.dump, to give {SHAPE}.")

    def truncated(self, n: int) -> PrunekitError:
        return PrunekitError(
            f"{self.path} is not valid JSON: it ends at byte {self.read} inside the top-level "
            f"{'object' if self.close == '}' else 'array'} (after {_count(n)}), so it was "
            "cut short; write it again completely.")

    # -- tokens -------------------------------------------------------------------------

    def string(self, n: int) -> tuple[str, int]:
        """The JSON string at ``pos`` (a key or a value), decoded, and where it starts."""
        while _string_end(self.buf, self.pos) < 0:
            if not self.more():
                raise self.truncated(n)
        start = self.pos
        try:
            text, self.pos = _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError as exc:
            raise self.invalid(exc.msg.removesuffix(" at"), n, exc.pos) from None
        return text, start

    def scalar(self, n: int) -> tuple[object, int]:
        """The number or literal at ``pos`` and where it starts; a ValueError for an integer
        literal longer than ``int()`` reads."""
        while (end := _SCALAR_END.search(self.buf, self.pos)) is None:
            if not self.more():
                raise self.truncated(n)  # a closing bracket must follow the last value
        start = self.pos
        try:
            value, self.pos = _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError:
            raise self.invalid("expected a number", n) from None
        except ValueError as exc:
            value, self.pos = exc, end.start()
        return value, start

    def number(self, c: str, n: int, key: str | None) -> float:
        """The value at ``pos`` (first character ``c``) as float64; a value that is not a
        number is recorded in ``problem`` (the first one) and read as NaN."""
        if c in "[{":
            raise PrunekitError(
                f"{self.path} {_item(n, key)} (byte {self.offset()}) is a JSON "
                f"{'array' if c == '[' else 'object'}, not a number; every score must be a "
                f"number: give {SHAPE}.")
        value, start = self.string(n) if c == '"' else self.scalar(n)
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float64's range
                pass
            why = "beyond the float64 range"
        elif isinstance(value, ValueError):
            why = "beyond the float64 range"
        else:
            why = "not a number; every score must be a number"
        if self.problem is None:
            self.problem = PrunekitError(
                f"{self.path} {_item(n, key)} (byte {self.offset(start)}) is "
                f"{_short(self.buf[start : self.pos])}, {why}.")
        return float("nan")

    # -- structure ----------------------------------------------------------------------

    def start(self) -> str:
        """Read past the opening bracket; ``"array"`` or ``"object"``."""
        c = self.peek()
        if c is None:
            raise PrunekitError(f"{self.path} is empty; it must hold {SHAPE}.")
        if c == "\ufeff":
            raise PrunekitError(f"{self.path} starts with a UTF-8 byte order mark, which JSON "
                                "does not allow; save it as UTF-8 without a BOM.")
        if c not in "[{":
            raise PrunekitError(f"{self.path} must hold {SHAPE}; it starts with {c!r} at byte "
                                f"{self.offset()}.")
        self.pos += 1
        self.close = "]" if c == "[" else "}"
        return "array" if c == "[" else "object"

    def items(self) -> Iterator[tuple[list[str] | None, list[float]]]:
        """The items after :meth:`start`, in file order, as pieces ``(keys or None, values)``;
        then the check that only whitespace follows the closing bracket, then the first
        value's error (no piece is given after it)."""
        keyed, n = self.close == "}", 0
        c = self.peek()
        closed = c == self.close
        if closed:
            self.pos += 1
        while not closed:
            if c is None:
                raise self.truncated(n)
            piece = self.run(keyed)
            if piece is None:  # one item, whatever it holds, and what follows it
                piece, closed = self.item(c, n, keyed)
            if self.problem is None:
                yield piece
            n += len(piece[1])
            c = None if closed else self.peek()
            if c == self.close:
                raise self.invalid(f"a comma before '{self.close}'", n)
        if self.peek() is not None:
            raise self.invalid(f"extra data after the closing '{self.close}'", n)
        if self.problem is not None:
            raise self.problem

    def item(self, c: str, n: int, keyed: bool) -> tuple[tuple[list | None, list], bool]:
        """Item ``n`` (first character ``c``) and the comma or closing bracket after it (True
        for the bracket)."""
        key = self.key(c, n) if keyed else None
        c = self.peek() if keyed else c
        if c is None:
            raise self.truncated(n)
        piece = ([key] if keyed else None, [self.number(c, n, key)])
        c = self.peek()
        if c is None:
            raise self.truncated(n + 1)
        if c not in ("," + self.close):
            raise self.invalid(f"expected ',' or '{self.close}'", n + 1)
        self.pos += 1
        return piece, c == self.close

    def run(self, keyed: bool) -> tuple[list[str] | None, list[float]] | None:
        """The run of plain items from ``pos`` with their commas, decoded in one call (as
        ``json.load`` decodes them), or its part before the first item json refuses; None
        when the next item is not plain."""
        m = (_OBJECT_RUN if keyed else _ARRAY_RUN).match(self.buf, self.pos)
        end = -1 if m is None else m.end() - 1
        for _ in range(2):  # the run, then its part before what json refuses in it
            if end <= self.pos:
                return None
            try:
                piece = _decode(self.buf[self.pos : end], keyed)
            except json.JSONDecodeError as exc:  # exc.pos counts the added bracket
                end = self.buf.rfind(",", self.pos, self.pos + exc.pos - 1)
                continue
            except (ValueError, OverflowError):
                return None  # an integer float64 cannot hold: read item by item, which names it
            self.pos = end + 1
            return piece
        return None

    def key(self, c: str, n: int) -> str:
        """An object's key and its colon."""
        if c != '"':
            raise self.invalid("expected a key in double quotes", n)
        key, _ = self.string(n)
        if self.peek() != ":":
            if self.peek() is None:
                raise self.truncated(n)
            raise self.invalid("expected ':' after the key", n)
        self.pos += 1
        return key


def _decode(text: str, keyed: bool) -> tuple[list[str] | None, list[float]]:
    """The items of ``text``, the inside of an object or an array."""
    if keyed:
        pairs = _PAIRS.raw_decode("{" + text + "}")[0]
        return [k for k, _ in pairs], [float(v) for _, v in pairs]
    return None, [float(v) for v in _DECODER.raw_decode("[" + text + "]")[0]]


def _string_end(buf: str, start: int) -> int:
    """The index after the closing quote of the string opening at ``buf[start]``, or -1
    when the window does not reach it."""
    i = start + 1
    while True:
        j = buf.find('"', i)
        if j < 0:
            return -1
        slashes = 0
        while buf[j - 1 - slashes] == "\\":
            slashes += 1
        if slashes % 2 == 0:
            return j + 1
        i = j + 1


def _item(n: int, key: str | None) -> str:
    """How an error names an item: ``item 3`` of an array, ``entry 'a'`` of an object."""
    return f"item {n}" if key is None else f"entry {_short(json.dumps(key, ensure_ascii=False))}"


def _count(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
