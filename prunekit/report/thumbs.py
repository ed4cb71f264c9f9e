"""The images behind the rows: find an id's image, read only it, and make a small PNG.

An id names an image in one of three ways:

* a folder ``ROOT``: the id is a file name relative to it (what ``lfm embed`` writes for a
  folder). Absolute ids, ids with ``..`` and ids whose file resolves (through symlinks)
  outside ``ROOT`` are refused, never read;
* WebDataset tar shards (a ``.tar`` file, a glob of them or a folder of ``.tar`` files):
  the id is a sample key; only tar headers are scanned and only the wanted members read;
* an in-memory provider: a mapping or a function from id to an image array.

Whatever fails (no such file, an id that names no file, a corrupt or enormous image) is a
:class:`Gap` with a reason, never an exception: the page shows the gap and names it.
Decoding needs Pillow, which matplotlib (the ``plot`` extra) brings along.
"""

from __future__ import annotations

import base64
import glob
import io
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_input, open_regular

THUMB_SIZE = 96  # longest side of a thumbnail, pixels
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
MAX_FILE_BYTES = 64 << 20  # larger files are not read
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "gif", "tif", "tiff")
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset: KEY.EXT, key up to the first dot


@dataclass(frozen=True)
class Gap:
    """An image that cannot be shown, and why."""

    reason: str


Loaded = bytes | np.ndarray | Gap


class ImageProvider:
    """Finds the images of a few ids; subclasses implement :meth:`fetch`."""

    name = "images"

    def fetch(self, ids: list[Any]) -> dict[Any, Loaded]:
        """Encoded bytes (or an array) per id, or a :class:`Gap`."""
        raise NotImplementedError


class FolderImages(ImageProvider):
    """Image files under ``root``; ids are paths relative to it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.real = Path(os.path.realpath(root))
        self.name = str(root)

    def fetch(self, ids: list[Any]) -> dict[Any, Loaded]:
        return {i: self._one(i) for i in ids}

    def _one(self, ident: Any) -> Loaded:
        path = safe_join(self.real, ident)
        if isinstance(path, Gap):
            return path
        return read_capped(path)


def safe_join(root: Path, ident: Any) -> Path | Gap:
    """``root / ident`` when ``ident`` is a relative file name that stays under ``root``."""
    if not isinstance(ident, str):
        return Gap(f"id {ident!r} is a row position, not a file name (embed the images with "
                   "'prunekit lfm embed' so the ids name their files)")
    if not ident or "\x00" in ident:
        return Gap("empty id: names no file")
    if PurePosixPath(ident).is_absolute() or PureWindowsPath(ident).is_absolute() or \
            PureWindowsPath(ident).drive:
        return Gap("absolute path refused: ids must be relative to the image root")
    if ".." in PurePosixPath(ident.replace("\\", "/")).parts:
        return Gap("'..' refused: ids must stay under the image root")
    path = Path(os.path.realpath(root / ident))
    if path != root and root not in path.parents:
        return Gap("resolves outside the image root (a symlink): refused")
    return path


def read_capped(path: Path) -> bytes | Gap:
    """The bytes of a regular file of at most MAX_FILE_BYTES, or a Gap saying why not.

    Opened non-blocking and checked on the open descriptor: a FIFO or device never blocks.
    """
    if not path.exists():
        return Gap("no such image file")
    try:
        fd = open_regular(path, "image")
    except PrunekitError as exc:
        msg = str(exc)
        return Gap("not a regular file" if "regular file" in msg or "directory" in msg else msg)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_FILE_BYTES:
            return Gap(f"file of {size >> 20} MiB is too large to read for a thumbnail")
        try:
            return fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return Gap(f"cannot read: {exc.strerror or exc}")


class TarImages(ImageProvider):
    """Images in WebDataset tar shards; ids are sample keys (``KEY.EXT`` members)."""

    def __init__(self, spec: str | os.PathLike) -> None:
        self.shards = tar_shards(spec)
        self.name = str(spec)

    def fetch(self, ids: list[Any]) -> dict[Any, Loaded]:
        want = {str(i): i for i in ids}
        found: dict[Any, Loaded] = {}
        for shard in self.shards:
            if len(found) == len(want):
                break  # every wanted key located: the other shards are not opened
            found.update(self._scan(shard, want, found))
        return {i: found.get(i, Gap("key not in the tar shards")) for i in ids}

    def _scan(self, shard: Path, want: dict[str, Any], found: dict) -> dict[Any, Loaded]:
        """Read the image member of each wanted key in one shard (headers only otherwise)."""
        out: dict[Any, Loaded] = {}
        try:
            with open(shard, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
                for m in tar:
                    hit = _MEMBER.match(m.name) if m.isfile() else None
                    if hit is None or hit.group(2).lower() not in IMAGE_EXTENSIONS:
                        continue
                    key = hit.group(1)
                    if key in want and want[key] not in found and want[key] not in out:
                        out[want[key]] = _member_bytes(fh, m)
        except (tarfile.TarError, OSError) as exc:
            for key, ident in want.items():
                if ident not in found and ident not in out:
                    out[ident] = Gap(f"shard {shard.name} unreadable ({exc}) before key {key} was found")
        return out


def _member_bytes(fh: Any, m: tarfile.TarInfo) -> bytes | Gap:
    if m.size > MAX_FILE_BYTES:
        return Gap(f"member of {m.size >> 20} MiB is too large to read for a thumbnail")
    here = fh.tell()
    fh.seek(m.offset_data)
    data = fh.read(m.size)
    fh.seek(here)
    return data


def tar_shards(spec: str | os.PathLike) -> list[Path]:
    """The .tar shards of ``spec`` (a file, a folder of .tar files or a glob), sorted."""
    text = str(spec)
    if Path(text).is_dir():
        paths = sorted(Path(text).glob("*.tar"))
    elif any(ch in text for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text))
    else:
        paths = [Path(text)] if Path(text).is_file() else []
    for p in paths:
        check_input(p, "WebDataset shard")
    if not paths:
        raise PrunekitError(f"--images {spec}: no .tar shards found; give a folder of images, "
                            "a .tar shard, a folder of shards or a glob such as 'shards/*.tar'.")
    return paths


class MemoryImages(ImageProvider):
    """Images held in memory: ``lookup`` maps an id to an array (or raises KeyError)."""

    def __init__(self, lookup: Mapping | Callable[[Any], Any], name: str = "<memory>") -> None:
        self.lookup = lookup
        self.name = name

    def fetch(self, ids: list[Any]) -> dict[Any, Loaded]:
        out: dict[Any, Loaded] = {}
        for i in ids:
            try:
                got = self.lookup[i] if isinstance(self.lookup, Mapping) else self.lookup(i)
            except (KeyError, IndexError):
                got = Gap("no image for this id")
            out[i] = got if isinstance(got, (bytes, Gap)) else np.asarray(got)
        return out


def open_provider(images: Any) -> ImageProvider:
    """An :class:`ImageProvider` for a folder, tar shards, a mapping or a function."""
    if isinstance(images, ImageProvider):
        return images
    if isinstance(images, Mapping) or callable(images):
        return MemoryImages(images)
    text = str(images)
    p = Path(text)
    if p.is_dir() and not any(p.glob("*.tar")):
        return FolderImages(p)
    if p.is_dir() or text.endswith(".tar") or any(ch in text for ch in "*?["):
        return TarImages(text)
    raise PrunekitError(f"--images {text}: not found; give a folder of images (ids are file "
                        "names relative to it) or WebDataset .tar shards.")


def require_pillow() -> None:
    """Thumbnails need Pillow (a dependency of matplotlib, the ``plot`` extra)."""
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise PrunekitError('thumbnails need Pillow: pip install "prunekit[plot]".') from exc


def thumbnail(item: Loaded, *, size: int = THUMB_SIZE, max_pixels: int = MAX_PIXELS) -> bytes | Gap:
    """A PNG of at most ``size`` pixels a side, or a Gap naming what went wrong."""
    if isinstance(item, Gap):
        return item
    from PIL import Image

    try:
        im = _array_image(item, max_pixels) if isinstance(item, np.ndarray) else \
            _decode(item, max_pixels)
        if isinstance(im, Gap):
            return im
        im.thumbnail((size, size), Image.Resampling.BOX if im.width > size else Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return Gap(f"cannot decode: {str(exc)[:120]}")


def _decode(data: bytes, max_pixels: int) -> Any:
    """Open encoded bytes, refuse more than ``max_pixels`` before decoding, return RGB."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            return Gap(f"too large to decode safely ({exc})")
        w, h = im.size
        if w * h > max_pixels:
            return Gap(f"{w} x {h} pixels: too large to decode safely (limit {max_pixels})")
        im.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a reduced scale
        return im.convert("RGB")


def _array_image(a: np.ndarray, max_pixels: int) -> Any:
    """An (H, W), (H, W, 1|3|4) or (1|3, H, W) array, uint8 or floats in [0, 1], as RGB."""
    from PIL import Image

    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        return Gap(f"an array of shape {a.shape} is not an image")
    if a.shape[0] * a.shape[1] > max_pixels:
        return Gap(f"{a.shape[1]} x {a.shape[0]} pixels: too large to show (limit {max_pixels})")
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI (the page carries its images inline)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def load_thumbs(provider: ImageProvider, ids: Iterable[Any], **kw: Any) -> dict[Any, bytes | Gap]:
    """Thumbnails of the distinct ``ids``: one fetch, then one decode per image."""
    uniq = list(dict.fromkeys(ids))
    fetched = provider.fetch(uniq) if uniq else {}
    return {i: thumbnail(fetched.get(i, Gap("not returned by the image provider")), **kw)
            for i in uniq}
