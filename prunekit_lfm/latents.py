"""Images -> VAE latents -> the latent store (``latents.h5``), and back to images.

Images are RGB float32 [N, 3, H, W] in [-1, 1] everywhere (gray sources are repeated
over the three channels), so any RGB VAE -- a trained-here one or Stable Diffusion's --
reads them. Latents are the VAE posterior MEAN (deterministic), shifted and scaled:
z = (mean - shift_factor) * scaling_factor, so that they have roughly unit variance.

``latents.h5``: dataset ``latents`` (N, C, h, w) float32, ``ids`` (N,) int64 or strings
(file names, or positions 0..N-1), optional ``labels`` (N,) int64; attributes
``scale_factor``, ``shift_factor``, ``vae`` (folder), ``image_size``, ``source``,
``fingerprint`` and the provenance stamp.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from prunekit.errors import PrunekitError
from prunekit.io.h5io import atomic_h5, attr_str, decode_ids, open_h5, require, write_ids
from prunekit.io.npzio import load_npy
from prunekit.io.provenance import stamp
from prunekit.runtime.progress import counter

from .guards import check_space, contained_path, writing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_NAMED = 5
MAX_LATENT = 1e6  # |z| above this is not a VAE latent (they are scaled to unit variance)


@dataclass
class LatentStore:
    """Latents of a data set with their ids, labels and where they came from."""

    latents: np.ndarray  # float32 [N, C, h, w]
    ids: np.ndarray  # int64 or object array of str, (N,)
    labels: np.ndarray | None = None  # int64 (N,)
    scale_factor: float = 1.0
    shift_factor: float = 0.0
    vae: str | None = None
    image_size: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.latents = np.ascontiguousarray(self.latents, dtype=np.float32)
        if self.latents.ndim != 4:
            raise PrunekitError(f"latents must be 4-D [N, C, h, w], got shape {self.latents.shape}.")
        n = self.latents.shape[0]
        self.ids = decode_ids(np.asarray(self.ids))
        if self.ids.shape != (n,):
            raise PrunekitError(f"latents have {n} rows but ids has shape {self.ids.shape}.")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (n,) or self.labels.dtype.kind not in "iu":
                raise PrunekitError(f"labels must be {n} integers, got {self.labels.dtype} {self.labels.shape}.")
            self.labels = self.labels.astype(np.int64)

    @property
    def n(self) -> int:
        return int(self.latents.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        return tuple(self.latents.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """max label + 1, or 0 without labels."""
        return 0 if self.labels is None or self.labels.size == 0 else int(self.labels.max()) + 1

    @property
    def fingerprint(self) -> str:
        """A hash of shape and values: the same latents give the same fingerprint."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.latents.shape).encode())
        h.update(self.latents.astype("<f4", copy=False).tobytes())
        return h.hexdigest()


def save_latents(path: str | os.PathLike, store: LatentStore, command: list[str] | None = None) -> Path:
    """Write ``store`` to an HDF5 file atomically, with provenance; returns the path.

    The free space is checked first; a failed write leaves no file and raises one error.
    """
    labels = 0 if store.labels is None else store.labels.nbytes
    check_space([(path, store.latents.nbytes + ids_bytes(store.ids) + labels)], "the latent store")
    with writing(path, "latents file"), atomic_h5(path) as f:
        f.create_dataset("latents", data=store.latents)
        write_ids(f, "ids", store.ids)
        if store.labels is not None:
            f.create_dataset("labels", data=store.labels)
        f.attrs["scale_factor"] = float(store.scale_factor)
        f.attrs["shift_factor"] = float(store.shift_factor)
        f.attrs["vae"] = store.vae or ""
        f.attrs["image_size"] = -1 if store.image_size is None else int(store.image_size)
        f.attrs["source"] = store.source
        f.attrs["fingerprint"] = store.fingerprint
        stamp(f.attrs, {"vae": store.vae, "image_size": store.image_size, "source": store.source}, command)
    return Path(path)


def ids_bytes(ids: np.ndarray) -> int:
    """Bytes ids take in an HDF5 file: 8 per integer, or the UTF-8 text plus 16 per string."""
    if ids.dtype.kind in "iu":
        return 8 * int(ids.size)
    return sum(len(str(v).encode()) + 16 for v in ids.tolist())


def load_latents(path: str | os.PathLike) -> LatentStore:
    """Read and validate a latent store written by :func:`save_latents`."""
    with open_h5(path, "latents") as f:
        ds = require(f, "latents", "latents")
        if ds.ndim != 4 or ds.dtype.kind != "f":
            raise PrunekitError(
                f"latents file {path} ['latents'] must be float [N, C, h, w], got {ds.dtype} {ds.shape}. "
                "Write it with `prunekit lfm encode`."
            )
        latents = np.asarray(ds[()], dtype=np.float32)
        ids = decode_ids(require(f, "ids", "latents")[()])
        labels = np.asarray(require(f, "labels", "latents")[()]) if "labels" in f else None
        size = int(f.attrs.get("image_size", -1))
        kwargs: dict[str, Any] = dict(
            scale_factor=float(f.attrs.get("scale_factor", 1.0)),
            shift_factor=float(f.attrs.get("shift_factor", 0.0)),
            vae=attr_str(f.attrs, "vae") or None,
            image_size=None if size < 0 else size,
            source=attr_str(f.attrs, "source", "") or "",
        )
    bad = np.flatnonzero(~np.isfinite(latents.reshape(latents.shape[0], -1)).all(axis=1))
    if bad.size:
        raise PrunekitError(
            f"latents file {path} has NaN/inf in rows {', '.join(map(str, bad[:MAX_NAMED]))}; re-encode them."
        )
    _check_magnitude(latents, path)
    if np.unique(ids.astype(str) if ids.dtype == object else ids).size != ids.size:
        raise PrunekitError(f"latents file {path} ['ids'] has duplicate ids; ids must be unique.")
    try:
        return LatentStore(latents=latents, ids=ids, labels=labels, **kwargs)
    except PrunekitError as exc:
        raise PrunekitError(f"latents file {path}: {exc}") from exc


def _check_magnitude(latents: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse latents far from unit scale: squared in the loss they overflow to inf/NaN."""
    if latents.size == 0:
        return
    peak = np.abs(latents).reshape(latents.shape[0], -1).max(axis=1)
    big = np.flatnonzero(peak > MAX_LATENT)
    if big.size:
        raise PrunekitError(
            f"latents file {path} has values up to {float(peak.max()):.3g} (rows "
            f"{', '.join(map(str, big[:MAX_NAMED]))}); VAE latents are about unit scale and |z| > "
            f"{MAX_LATENT:g} makes the training loss overflow. Re-encode with `prunekit lfm encode` "
            "(it applies the VAE's scaling_factor) or rescale the latents to unit variance."
        )


# ----------------------------------------------------------------------------- images


@dataclass
class ImageSource:
    """Images read on demand: ``n`` of them, their ``ids`` and ``labels`` (or None).

    ``read(start, stop)`` returns rows [start, stop) as float32 [b, 3, H, W] in [-1, 1],
    so a large folder or array is encoded batch by batch, never held in memory whole.
    """

    n: int
    ids: np.ndarray
    labels: np.ndarray | None
    read: Callable[[int, int], np.ndarray]
    name: str = ""


def open_images(spec: str | os.PathLike, size: int | None = 32, *, key: str = "images") -> ImageSource:
    """An :class:`ImageSource` for ``spec`` (see :func:`load_images` for what it may be)."""
    text = str(spec)
    if text == "digits":
        x, ids, labels = _digits(size or 8)
        return ImageSource(x.shape[0], ids, labels, lambda a, b: x[a:b], "digits")
    path = Path(text)
    if path.is_dir():
        return _folder(path, size)
    if not path.exists():
        raise PrunekitError(f"images not found: {path}. Give 'digits', a folder of images, or an .npy/HDF5 array.")
    if path.suffix.lower() == ".npy":
        try:
            arr = load_npy(path, mmap=True)
        except ValueError as exc:
            raise PrunekitError(f"cannot read image array {path}: {exc}") from exc
        _check_array_shape(arr.shape, path)
        ids = np.arange(arr.shape[0], dtype=np.int64)
        return ImageSource(arr.shape[0], ids, None, lambda a, b: _array_images(arr[a:b], path, size), str(path))
    if h5py.is_hdf5(path):
        with open_h5(path, "images") as f:
            ds = require(f, key, "images")
            n, shape = ds.shape[0], ds.shape
            ids = decode_ids(f["ids"][()]) if "ids" in f else np.arange(n, dtype=np.int64)
            labels = np.asarray(f["labels"][()]).astype(np.int64) if "labels" in f else None
        _check_array_shape(shape, path)
        if ids.shape[0] != n or (labels is not None and labels.shape[0] != n):
            raise PrunekitError(f"images file {path}: ids/labels length differs from the {n} images.")

        def read(a: int, b: int) -> np.ndarray:
            with h5py.File(path, "r") as f:
                return _array_images(np.asarray(f[key][a:b]), path, size)

        return ImageSource(n, ids, labels, read, str(path))
    raise PrunekitError(f"cannot read images from {path}: use a folder, an .npy or an HDF5 file, or 'digits'.")


def load_images(
    spec: str | os.PathLike, size: int | None = 32, *, key: str = "images"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images as float32 [N, 3, size, size] in [-1, 1], their ids, and labels (or None).

    ``spec`` is ``digits`` (scikit-learn's 1797 bundled 8x8 digits, upsampled bilinearly;
    ids = positions, labels = the digit), a folder of image files (recursive, sorted; ids =
    relative paths; labels = class index when every file sits in a first-level subfolder),
    or an array file: ``.npy`` or HDF5 with dataset ``key`` (and optional ``ids``,
    ``labels``), shaped [N, H, W], [N, H, W, 3] or [N, 3, H, W], uint8 (0..255) or float in
    [0, 1]. ``size=None`` keeps the source size (8 for the digits). For data sets too
    large for memory use :func:`open_images`, which reads batch by batch.
    """
    src = open_images(spec, size, key=key)
    return src.read(0, src.n), src.ids, src.labels


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    mode = "bilinear" if size > min(x.shape[-2:]) else "area"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(x, size=(size, size), mode=mode, **kwargs)


def _digits(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    x = _resize(x, size).clamp(0, 1) * 2 - 1
    return x.repeat(1, 3, 1, 1).numpy(), np.arange(x.shape[0], dtype=np.int64), d.target.astype(np.int64)


def _check_array_shape(shape: tuple[int, ...], path: Path) -> None:
    ok = len(shape) == 3 or (len(shape) == 4 and (shape[1] in (1, 3) or shape[-1] in (1, 3)))
    if not ok:
        raise PrunekitError(
            f"image array {path} must be [N, H, W], [N, H, W, 3] or [N, 3, H, W]; got {tuple(shape)}."
        )


def _array_images(arr: np.ndarray, path: Path, size: int | None) -> np.ndarray:
    _check_array_shape(arr.shape, path)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind == "f":
        x = arr.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise PrunekitError(f"float image array {path} must lie in [0, 1] (or use uint8 0..255).")
    else:
        raise PrunekitError(f"image array {path} must be uint8 or float, got {arr.dtype}.")
    t = _resize(torch.from_numpy(np.ascontiguousarray(x)), size).clamp(0, 1) * 2 - 1
    if t.shape[1] == 1:
        t = t.repeat(1, 3, 1, 1)
    return t.numpy()


def _folder(path: Path, size: int | None) -> ImageSource:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PrunekitError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}.")
    rel = [p.relative_to(path) for p in files]
    inside: set[Path] = set()  # folders known to resolve inside: one realpath per folder
    for p, r in zip(files, rel, strict=True):  # a symlink leading out is refused, as for ids
        if p.is_symlink() or p.parent not in inside:
            contained_path(path, r.as_posix(), "image file")
            if not p.is_symlink():
                inside.add(p.parent)
    labels = None
    if all(len(r.parts) == 2 for r in rel):
        classes = sorted({r.parts[0] for r in rel})
        labels = np.array([classes.index(r.parts[0]) for r in rel], dtype=np.int64)
    ids = np.array([r.as_posix() for r in rel], dtype=object)
    return ImageSource(len(files), ids, labels, lambda a, b: _read_files(files[a:b], path, size), str(path))


def _read_files(files: list[Path], folder: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = _center_square(im).resize((size, size), Image.BICUBIC)
                images.append(np.asarray(im, dtype=np.uint8))
        except Image.DecompressionBombError as exc:
            raise PrunekitError(
                f"image {p} is too large to decode safely ({exc}); a decompression bomb or a "
                "mislabelled file. Remove it from the folder, or resize it first."
            ) from exc
        except OSError as exc:
            raise PrunekitError(f"cannot read image {p}: {exc}") from exc
    if len({a.shape for a in images}) != 1:
        raise PrunekitError(f"images in {folder} differ in size; pass a size to resize them.")
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1


def _center_square(im: Any) -> Any:
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


# ----------------------------------------------------------------------------- VAE


def _factors(vae: Any) -> tuple[float, float]:
    scale = float(getattr(vae.config, "scaling_factor", None) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return scale, shift


def encode(
    images: np.ndarray | torch.Tensor | ImageSource, vae: Any, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Images [N, 3, H, W] in [-1, 1] (an array or an :class:`ImageSource`) -> latents
    float32 [N, C, h, w].

    Uses the posterior mean (deterministic), then (mean - shift_factor) * scaling_factor
    with the factors from the VAE's config.
    """
    out = [z for _, z in encode_batches(images, vae, batch_size, progress=progress)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@torch.no_grad()
def encode_batches(
    images: np.ndarray | torch.Tensor | ImageSource, vae: Any, batch_size: int = 64, *,
    starts: Iterable[int] | None = None, progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, latents of rows [start, start + batch_size))`` for each batch start in
    ``starts`` (default: every batch, in order), as :func:`encode` computes them.

    A batch's latents depend on its rows only (the posterior mean draws nothing), so the
    batches may be computed in any order or by different processes.
    """
    vae.eval()
    scale, shift = _factors(vae)
    device = next(vae.parameters()).device
    if isinstance(images, ImageSource):
        n, read = images.n, images.read
    else:
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images, dtype=torch.float32)
        n, read = x.shape[0], lambda a, b: x[a:b]
    starts = list(range(0, n, batch_size) if starts is None else starts)
    with counter(sum(min(batch_size, n - a) for a in starts), desc="encode", progress=progress) as bar:
        for a in starts:
            batch = torch.as_tensor(read(a, min(a + batch_size, n)), dtype=torch.float32).to(device)
            mean = vae.encode(batch).latent_dist.mean
            yield a, ((mean - shift) * scale).float().cpu().numpy()
            bar.update(batch.shape[0])


@torch.no_grad()
def decode(
    latents: np.ndarray | torch.Tensor, vae: Any, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """Latents [N, C, h, w] (scaled as by :func:`encode`) -> images float32 [N, 3, H, W] in [-1, 1]."""
    vae.eval()
    scale, shift = _factors(vae)
    device = next(vae.parameters()).device
    z = torch.as_tensor(np.asarray(latents) if not torch.is_tensor(latents) else latents, dtype=torch.float32)
    out = []
    with counter(z.shape[0], desc="decode", progress=progress) as bar:
        for start in range(0, z.shape[0], batch_size):
            batch = z[start : start + batch_size].to(device) / scale + shift
            out.append(vae.decode(batch).sample.clamp(-1, 1).float().cpu())
            bar.update(batch.shape[0])
    return torch.cat(out).numpy()
