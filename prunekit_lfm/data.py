"""Using a selection where the data lives: PyTorch, Hugging Face datasets, WebDataset, folders.

A selection file (``prunekit select``) names the rows to keep, by position and -- when the
embeddings had them -- by id (file names, WebDataset keys). These helpers apply it to the
objects training code already has:

* :func:`torch_subset` -- a ``torch.utils.data.Subset`` (oversampled rows repeated
  ``counts`` times); :func:`torch_sampler` -- a sampler over the full data set that
  draws only kept rows, weighted by ``counts``;
* :func:`hf_select` -- ``datasets.Dataset.select`` with the kept rows (by position, or
  matched through an id column);
* :func:`webdataset_stage` -- a pipeline stage that passes only the kept keys (each
  ``counts`` times); :func:`index_webdataset` -- tar shards as an indexed image source;
* :func:`selected_files` -- the kept files of an image folder.

Rows are matched by id when both sides have ids, by position otherwise
(:func:`prunekit.resolve_rows`); a mismatch is an error naming both sides.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.source import natural_key
from prunekit.selection.subset import Selection, load_selection, resolve_rows

from .guards import check_relative_name, contained_path

SelectionLike = Selection | str | os.PathLike
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")


def as_selection(selection: SelectionLike) -> Selection:
    """A :class:`~prunekit.selection.subset.Selection`, loading it when given a path."""
    return selection if isinstance(selection, Selection) else load_selection(selection)


def selected_rows(selection: SelectionLike, n: int, ids: Iterable | None = None,
                  *, name: str = "the data set") -> np.ndarray:
    """Positions (into a data set of ``n`` items with optional ``ids``) of the kept rows.

    Each position appears ``counts`` times when the selection oversamples.
    """
    sel = as_selection(selection)
    return resolve_rows(sel, n, _ids_array(ids), selection_name="selection", target_name=name)


def _ids_array(ids: Iterable | None) -> np.ndarray | None:
    """Ids as resolve_rows compares them: int64 when all integers, else objects."""
    if ids is None:
        return None
    arr = np.asarray(list(ids), dtype=object)
    if arr.size and all(isinstance(v, (int, np.integer)) for v in arr):
        return arr.astype(np.int64)
    return arr


# ----------------------------------------------------------------------------- PyTorch


def torch_subset(dataset: Any, selection: SelectionLike, ids: Iterable | None = None) -> Any:
    """``torch.utils.data.Subset`` of ``dataset`` with the kept rows (repeated by counts)."""
    from torch.utils.data import Subset

    rows = selected_rows(selection, len(dataset), ids)
    return Subset(dataset, rows.tolist())


def torch_sampler(selection: SelectionLike, n: int | None = None, ids: Iterable | None = None,
                  *, num_samples: int | None = None, seed: int = 0) -> Any:
    """A sampler over a full data set of ``n`` items that draws only the kept rows.

    Without oversampling: every kept row once per epoch, in a seeded random order
    (``SubsetRandomSampler``). With ``counts``: ``WeightedRandomSampler`` with weight
    ``counts[j]`` on kept row j and 0 elsewhere, ``num_samples`` draws per epoch (default
    ``sum(counts)``) with replacement, so each row is drawn counts-proportionally.
    """
    import torch
    from torch.utils.data import SubsetRandomSampler, WeightedRandomSampler

    sel = as_selection(selection)
    n = sel.n_total if n is None else int(n)
    gen = torch.Generator().manual_seed(int(seed))
    rows = selected_rows(sel, n, ids)
    if sel.counts is None:
        return SubsetRandomSampler(rows.tolist(), generator=gen)
    weights = torch.from_numpy(np.bincount(rows, minlength=n).astype(np.float64))
    total = int(rows.size) if num_samples is None else int(num_samples)
    return WeightedRandomSampler(weights, total, replacement=True, generator=gen)


# ----------------------------------------------------------------------------- Hugging Face


def hf_select(dataset: Any, selection: SelectionLike, id_column: str | None = None) -> Any:
    """``dataset.select(kept rows)`` for a ``datasets.Dataset``.

    With ``id_column`` the selection's ids are matched to that column's values (e.g. file
    names); otherwise by position. Oversampled rows appear ``counts`` times.
    """
    ids = None
    if id_column is not None:
        if id_column not in dataset.column_names:
            raise PrunekitError(
                f"the dataset has no column '{id_column}' (columns: {', '.join(dataset.column_names)})."
            )
        ids = dataset[id_column]
    return dataset.select(selected_rows(selection, len(dataset), ids).tolist())


# ----------------------------------------------------------------------------- WebDataset


def webdataset_stage(selection: SelectionLike) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """A WebDataset pipeline stage keeping the selected keys, each ``counts`` times.

    Use it as ``wds.WebDataset(urls).compose(stage)`` or inside ``wds.DataPipeline``. The
    selection needs string ids (the ``__key__`` of each sample, as ``prunekit lfm embed``
    writes them). Samples are passed in shard order, repeats back to back.
    """
    sel = as_selection(selection)
    if sel.ids is None or sel.ids.dtype != object:
        raise PrunekitError(
            "filtering WebDataset shards needs a selection with string ids (the samples' keys); "
            "embed the shards with 'prunekit lfm embed' so the embeddings carry them."
        )
    counts = dict(zip(sel.ids.tolist(), (sel.counts if sel.counts is not None
                                         else np.ones(sel.n_kept, np.int64)).tolist(), strict=True))

    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        for sample in samples:
            for _ in range(counts.get(sample["__key__"], 0)):
                yield sample

    return stage


@dataclass
class ShardIndex:
    """The samples of WebDataset tar shards: keys, where each image lies, ``cls`` labels.

    Sample j's encoded image is ``size[j]`` bytes at byte ``offset[j]`` of
    ``shards[shard[j]]`` (a few bytes per sample besides its key).
    """

    shards: list[Path]
    keys: np.ndarray  # object array of str
    shard: np.ndarray  # int32
    offset: np.ndarray  # int64
    size: np.ndarray  # int64
    labels: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.keys.size)

    def read_bytes(self, start: int, stop: int) -> list[bytes]:
        """The encoded images of samples [start, stop)."""
        out, handles = [], {}
        try:
            for j in range(start, stop):
                s = int(self.shard[j])
                f = handles.get(s) or handles.setdefault(s, open(self.shards[s], "rb"))
                f.seek(int(self.offset[j]))
                out.append(f.read(int(self.size[j])))
        finally:
            for f in handles.values():
                f.close()
        return out


def shard_paths(spec: str | os.PathLike) -> list[Path]:
    """Tar shards named by ``spec``: a .tar file, a brace pattern (``a-{000..009}.tar``), a
    glob, or a folder of .tar files; natural-sorted."""
    text = str(spec)
    if Path(text).is_dir():
        paths = list(Path(text).glob("*.tar"))
    elif "{" in text:
        try:
            from braceexpand import braceexpand
        except ImportError:
            raise PrunekitError(
                'brace patterns of shards need braceexpand: pip install "prunekit[embed]".'
            ) from None

        paths = [Path(p) for p in braceexpand(text)]
    elif any(ch in text for ch in "*?["):
        paths = [Path(p) for p in glob.glob(text)]
    else:
        paths = [Path(text)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PrunekitError(f"WebDataset shard(s) not found: {', '.join(missing[:5])}. Check {spec}.")
    if not paths:
        raise PrunekitError(f"no .tar shards match {spec}.")
    return sorted(paths, key=natural_key)


def is_webdataset(spec: str | os.PathLike) -> bool:
    """Does ``spec`` name tar shards (rather than an image folder or array)?"""
    text = str(spec)
    if text.endswith(".tar") or (("{" in text or "*" in text) and ".tar" in text):
        return True
    p = Path(text)
    return p.is_dir() and any(p.glob("*.tar")) and not any(
        q.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS for q in p.rglob("*") if q.is_file())


def index_webdataset(spec: str | os.PathLike, *, labels: bool = False) -> ShardIndex:
    """Index tar shards (WebDataset layout: files ``KEY.EXT`` grouped by key).

    Each sample needs one image member (jpg, png, webp, ...); with ``labels`` also a
    ``cls`` member holding an integer. Keys must be unique across shards and relative
    names (no absolute path, no ``..``): they become ids, which tools join to folders.
    """
    shards = shard_paths(spec)
    keys: list[str] = []
    where: list[tuple[int, int, int]] = []  # (shard, offset, size) per sample
    classes: list[int] = []
    for i, path in enumerate(shards):
        for key, members, tar in _groups(path):
            image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
            if image is None:
                raise PrunekitError(
                    f"sample '{key}' in {path} has no image member "
                    f"({', '.join(sorted(members))}); expected one of {', '.join(IMAGE_EXTENSIONS)}."
                )
            keys.append(check_relative_name(key, f"sample key in {path}"))
            where.append((i, image.offset_data, image.size))
            if labels:
                classes.append(_read_cls(tar, members, key, path))
    if not keys:
        raise PrunekitError(f"the shards {spec} hold no samples.")
    arr = np.array(keys, dtype=object)
    uniq, counts = np.unique(arr.astype(str), return_counts=True)
    if uniq.size != arr.size:
        raise PrunekitError(f"WebDataset keys repeat across shards (e.g. {uniq[counts > 1][0]}); "
                            "keys must be unique.")
    loc = np.array(where, dtype=np.int64)
    return ShardIndex(shards, arr, loc[:, 0].astype(np.int32), loc[:, 1], loc[:, 2],
                      np.array(classes, dtype=np.int64) if labels else None)


def _groups(path: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(key, {extension: member}) per sample, in tar order (WebDataset's grouping rule)."""
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise PrunekitError(f"cannot read WebDataset shard {path}: {exc}") from exc
    with tar:
        key, members = None, {}
        for m in tar:
            if not m.isfile():
                continue
            match = re.match(r"^((?:.*/|)[^./]+)\.([^/]*)$", m.name)
            if match is None:
                continue
            k, ext = match.group(1), match.group(2).lower()
            if k != key and key is not None:
                yield key, members, tar
                members = {}
            key = k
            members[ext] = m
        if key is not None:
            yield key, members, tar


def _read_cls(tar: tarfile.TarFile, members: dict, key: str, path: Path) -> int:
    if "cls" not in members:
        raise PrunekitError(f"sample '{key}' in {path} has no 'cls' member; leave out --labels.")
    raw = tar.extractfile(members["cls"]).read()
    try:
        return int(raw.decode().strip())
    except ValueError:
        raise PrunekitError(f"sample '{key}' in {path}: 'cls' is not an integer ({raw[:20]!r}).") from None


def decode_image(data: bytes, where: str) -> Any:
    """Encoded bytes -> an RGB PIL image, or a PrunekitError naming ``where``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PrunekitError(f"cannot decode image {where}: {exc}") from exc


# ----------------------------------------------------------------------------- folders


def selected_files(selection: SelectionLike, folder: str | os.PathLike) -> list[Path]:
    """The kept files of an image folder (ids are paths relative to it), repeated by counts.

    Every file must exist and lie inside ``folder``: an absolute id, a ``..`` that climbs
    out, or a symlink leading outside is refused (:func:`prunekit_lfm.guards.contained_path`).
    The list follows the selection's (ascending) order.
    """
    sel = as_selection(selection)
    if sel.ids is None or sel.ids.dtype != object:
        raise PrunekitError(
            "a file list needs a selection with file-name ids; embed the folder with "
            "'prunekit lfm embed' (or encode it) so the embeddings carry them."
        )
    root = Path(folder)
    names = sel.ids if sel.counts is None else np.repeat(sel.ids, sel.counts)
    files = [contained_path(root, str(name), "selection id") for name in names.tolist()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PrunekitError(f"{len(missing)} selected files are not in {root} (e.g. {missing[0]}).")
    return files
