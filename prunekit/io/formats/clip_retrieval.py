"""clip-retrieval's layout: ``.npy`` shards with their ids in Parquet metadata files.

``img_emb/img_emb_N.npy`` holds the rows of shard N and ``metadata_N.parquet`` (beside it,
or in ``../metadata/``) its ids. A folder holding only ``img_emb/`` (and ``metadata/``) is
read from ``img_emb/``. The metadata files are id sources, never shards.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.formats.base import Shard, checked_ids
from prunekit.io.formats.parquet import column

EMB_FOLDER = "img_emb"
SHARD_FORMATS = ("npy",)  # the formats whose shards take ids from metadata files


def is_metadata(p: Path) -> bool:
    """Whether ``p`` is a metadata file (an id source, not a shard)."""
    return p.suffix == ".parquet" and p.name.startswith("metadata")


def metadata_for(f: Path) -> Path | None:
    """``metadata_N.parquet`` beside ``img_emb_N.npy`` or in ``../metadata``; None: none."""
    m = re.fullmatch(r".*?_?(\d+)\.npy", f.name)
    if not m:
        return None
    for d in (f.parent, f.parent.parent / "metadata"):
        cand = d / f"metadata_{m.group(1)}.parquet"
        if cand.is_file():
            return cand
    return None


def shard_folder(d: Path, is_shard: Callable[[Path], bool]) -> Path:
    """The folder holding a directory's shards: ``d/img_emb`` when ``d`` has that folder
    and no shard files of its own, else ``d``."""
    if (d / EMB_FOLDER).is_dir() and not any(is_shard(f) for f in d.iterdir() if f.is_file()):
        return d / EMB_FOLDER
    return d


def read_ids(shard: Shard) -> np.ndarray:
    """The ids of a shard from its metadata file (``shard.ids_from``), checked."""
    return checked_ids(column(shard.ids_from, shard.id_key), shard)  # type: ignore[arg-type]


def check_id_sources(shards: list[Shard], name: str) -> None:
    """All or none of a sharded input's ``.npy`` shards have a metadata file."""
    npy = [s for s in shards if s.kind in SHARD_FORMATS]
    missing = [s for s in npy if s.ids_from is None]
    if missing and len(missing) < len(npy):
        raise PrunekitError(
            f"shard {missing[0].path} has no metadata_N.parquet beside it but other shards of "
            f"{name} do; restore the missing metadata file."
        )
