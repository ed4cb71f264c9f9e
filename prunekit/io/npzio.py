"""Reading ``.npz`` archives safely: headers without decompressing, clear errors, no pickles.

``numpy.load`` on an ``.npz`` decompresses a whole member to learn its shape, and reports a
truncated archive, a bad CRC or an object array with exceptions of its own. These helpers
read a member's shape and dtype from its ``.npy`` header alone, check that the member fits
in memory before it is decompressed (a small archive of zeros can expand to gigabytes),
and turn every failure into a :class:`PrunekitError` that names the file.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.runtime.memory import check_fits

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


def _header(path: str | os.PathLike, name: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(path) as z, z.open(name + ".npy") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            else:
                shape, _, dtype = fmt._read_array_header(fh, version)
    except _BROKEN as exc:
        raise _broken(path, exc) from exc
    return shape, dtype


def npz_shape(path: str | os.PathLike, name: str) -> tuple[int, ...]:
    """The shape of array ``name`` from its header, whatever its dtype (objects included)."""
    return _header(path, name)[0]


def load_npz_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """Array ``name`` of an ``.npz`` archive, after checking its expanded size fits in memory."""
    shape, dtype = npz_header(path, name)
    check_fits(float(np.prod(shape, dtype=np.float64)) * dtype.itemsize, f"{path} ['{name}'] (decompressed)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[name]
    except _BROKEN as exc:
        raise _broken(path, exc) from exc
