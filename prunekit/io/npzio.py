"""Reading ``.npz`` archives safely: headers without decompressing, clear errors, no pickles.

``numpy.load`` on an ``.npz`` decompresses a whole member to learn its shape, and reports a
truncated archive, a bad CRC or an object array with exceptions of its own. These helpers
read a member's shape and dtype from its ``.npy`` header alone, check that the member fits
in memory before it is decompressed (a small archive of zeros can expand to gigabytes),
and turn every failure into a :class:`PrunekitError` that names the file.

It also owns the one lock every ``.npy`` header parse takes (:func:`load_npy`,
:func:`read_npy_header`). numpy parses a header with ``ast.literal_eval``, and CPython before
3.11.8 and 3.12.2 keeps the AST validator's recursion depth per interpreter instead of per
thread (CPython issue 106905): two engine tasks opening ``.npy`` files at once can then fail
with ``SystemError: AST constructor recursion depth mismatch``.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
from typing import BinaryIO, NamedTuple

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.runtime.memory import check_fits

NPY_HEADER_LOCK = threading.Lock()  # held while numpy parses a header (see the module doc)
_BROKEN = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError)


def _broken(path: str | os.PathLike, exc: Exception) -> PrunekitError:
    return PrunekitError(f"cannot read {path} as .npz ({exc}); the archive is damaged or not written "
                         "by numpy.savez. Save it again.")


def npz_names(path: str | os.PathLike) -> list[str]:
    """The array names of an ``.npz`` archive."""
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
    except _BROKEN as exc:
        raise _broken(path, exc) from exc


def npz_header(path: str | os.PathLike, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of array ``name`` read from its header; object arrays are refused."""
    shape, dtype = _header(path, name)
    if dtype.hasobject:
        raise PrunekitError(
            f"{path} ['{name}'] holds Python objects, which prunekit never unpickles; "
            "store numbers (or strings for ids)."
        )
    return shape, dtype


class NpyHeader(NamedTuple):
    """What an ``.npy`` header says: ``offset`` is where the data start in the stream."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int


# numpy writes 1.0, 2.0 (a 4-byte header length) and 3.0 (2.0 with a UTF-8 header).
NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))


def read_npy_header(fh: BinaryIO, where: str) -> NpyHeader:
    """The header of the ``.npy`` stream ``fh`` (at its start), read with numpy's public
    readers; ``where`` names the file in errors. Any version other than 1.0, 2.0 and 3.0,
    a malformed header or a negative dimension is a PrunekitError. The one ``.npy`` header
    parser: ``.npz`` members here, ``.npy`` files in :mod:`prunekit.io.formats.npy`."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            with NPY_HEADER_LOCK:
                shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            fh2 = _as_version_2(fh, version)
            with NPY_HEADER_LOCK:
                shape, fortran, dtype = fmt.read_array_header_2_0(fh2)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not one numpy writes "
                             f"({', '.join(f'{a}.{b}' for a, b in NPY_VERSIONS)})")
        offset = fh.tell()
    except (ValueError, OSError, EOFError, struct.error) as exc:
        raise PrunekitError(f"cannot read {where} as .npy: {exc}. "
                            "Save it again with numpy.save.") from exc
    if any(n < 0 for n in shape):
        raise PrunekitError(f"cannot read {where} as .npy: its header gives the negative shape "
                            f"{shape}. Save it again with numpy.save.")
    return NpyHeader(tuple(int(n) for n in shape), bool(fortran), dtype, offset)


def _as_version_2(fh: BinaryIO, version: tuple[int, int]) -> BinaryIO:
    """``fh`` itself for 2.0; for 3.0 (UTF-8) its header re-encoded as 2.0 (latin-1), which
    numpy's public reader parses. A header outside latin-1 names structured fields, which
    embeddings never have."""
    if version == (2, 0):
        return fh
    raw = fh.read(4)
    if len(raw) < 4:
        raise ValueError("EOF in the header length")
    (n,) = struct.unpack("<I", raw)
    body = fh.read(n) if n <= 1 << 20 else b""
    if len(body) != n:
        raise ValueError(f"a header of {n} bytes that the file does not hold")
    try:
        text = body.decode("utf-8").encode("latin-1")
    except UnicodeError as exc:
        raise ValueError(f"a 3.0 header with characters no numeric array needs ({exc})") from None
    return io.BytesIO(struct.pack("<I", len(text)) + text)


def _header(path: str | os.PathLike, name: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with zipfile.ZipFile(path) as z, z.open(name + ".npy") as fh:
            h = read_npy_header(fh, f"{path} ['{name}']")
    except _BROKEN as exc:
        raise _broken(path, exc) from exc
    return h.shape, h.dtype


def npz_shape(path: str | os.PathLike, name: str) -> tuple[int, ...]:
    """The shape of array ``name`` from its header, whatever its dtype (objects included)."""
    return _header(path, name)[0]


def load_npz_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """Array ``name`` of an ``.npz`` archive, after checking its expanded size fits in memory."""
    shape, dtype = npz_header(path, name)
    check_fits(float(np.prod(shape, dtype=np.float64)) * dtype.itemsize, f"{path} ['{name}'] (decompressed)")
    try:
        with np.load(path, allow_pickle=False) as z, NPY_HEADER_LOCK:
            return z[name]
    except _BROKEN as exc:
        raise _broken(path, exc) from exc


def load_npy(source: str | os.PathLike | BinaryIO, *, mmap: bool = False) -> np.ndarray:
    """``numpy.load`` of one ``.npy`` file or stream, never unpickling, its header parsed under
    :data:`NPY_HEADER_LOCK`. ``mmap``: the file is mapped read-only under the lock and read
    outside it; a whole read holds the lock throughout (small arrays: records, scratch)."""
    with NPY_HEADER_LOCK:
        return np.load(source, mmap_mode="r" if mmap else None, allow_pickle=False)
