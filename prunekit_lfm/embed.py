"""Images -> an embeddings file from a pretrained image encoder (CLIP, DINOv2, SigLIP, TorchScript).

The paper selects its subsets in CLIP ViT-B/32's image-feature space, L2-normalised. This
module makes that space (and others) from images:

* ``clip`` -- ``CLIPModel.get_image_features``: the projected image embedding;
* ``dinov2`` -- ``Dinov2Model``'s CLS token (last hidden state, after the final norm);
* ``siglip`` -- ``SiglipModel.get_image_features``: the pooled image embedding;
* ``torchscript:PATH`` -- any TorchScript module taking float32 [B, 3, S, S] RGB in [0, 1]
  and returning [B, D] (it does its own normalisation).

Hugging Face weights come from a local folder (``save_pretrained``) or the local Hugging
Face cache, never from the network (``local_files_only=True``). Pixels are prepared by the
model's own image processor (resize, crop, mean/std), fed RGB floats in [0, 1].

Inputs are those of ``prunekit lfm encode`` (:func:`prunekit_lfm.latents.open_images`:
``digits``, image folders, .npy/HDF5 arrays) plus WebDataset tar shards
(:mod:`prunekit_lfm.data`). Embedding is batched, shows a progress bar and keeps finished
batches in ``OUTPUT.parts/`` so an interrupted run continues with ``resume=True``. Large
inputs may be written as a directory of shards (``shard_rows``, :mod:`prunekit.io.shard_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.errors import PrunekitError
from prunekit.io.atomic import write_text
from prunekit.io.h5io import atomic_h5, write_ids
from prunekit.io.provenance import stamp
from prunekit.io.shard_dir import atomic_dir, check_shard_dir, shard_name, shard_ranges
from prunekit.runtime.progress import counter

from .data import decode_image, index_webdataset, is_webdataset
from .distributed import Dist, barrier, load_part, part_path, save_part, together
from .guards import (
    check_finite,
    check_space,
    contained_path,
    convert_command,
    run_user_model,
    writing,
)
from .latents import ids_bytes, open_images

ENCODERS = ("clip", "dinov2", "siglip")
TORCHSCRIPT = "torchscript:"
MODEL_CLASSES = {"clip": "CLIPModel", "dinov2": "Dinov2Model", "siglip": "SiglipModel"}
# The weights each encoder uses when --weights is not given (read from the local cache).
DEFAULT_WEIGHTS = {
    "clip": "openai/clip-vit-base-patch32",  # the paper's choice
    "dinov2": "facebook/dinov2-base",
    "siglip": "google/siglip-base-patch16-224",
}
DTYPES = ("float32", "float16")
DEFAULT_TORCHSCRIPT_SIZE = 224


# ----------------------------------------------------------------------------- inputs


@dataclass
class ImageInput:
    """``n`` images read on demand as float32 [3, H, W] RGB arrays in [0, 1] (any H, W).

    ``ids``: relative file names, WebDataset keys, or positions; ``labels`` or None.
    """

    n: int
    ids: np.ndarray
    labels: np.ndarray | None
    read: Callable[[int, int], list[np.ndarray]]
    name: str


def open_inputs(spec: str | os.PathLike, *, labels: bool = False, key: str = "images") -> ImageInput:
    """The images of ``spec``: what ``lfm encode`` reads, or WebDataset tar shards.

    With ``labels``: labels from first-level sub-folder names, the digits' classes, an
    array file's ``labels`` or the shards' ``cls`` members; an error when there are none.
    """
    text = str(spec)
    if is_webdataset(text):
        index = index_webdataset(text, labels=labels)

        def read_shards(a: int, b: int) -> list[np.ndarray]:
            return [_chw(decode_image(data, f"'{index.keys[a + i]}' in {text}"))
                    for i, data in enumerate(index.read_bytes(a, b))]

        return ImageInput(index.n, index.keys, index.labels, read_shards, text)
    src = open_images(text, size=None, key=key)
    if labels and src.labels is None:
        raise PrunekitError(
            f"--labels: {text} carries no labels. Put each image in a first-level sub-folder "
            "named after its class, store 'labels' beside the array, or leave out --labels."
        )
    if Path(text).is_dir():
        root = Path(text)

        def read_files(a: int, b: int) -> list[np.ndarray]:
            return [_chw(_open_file(contained_path(root, str(name), "image id")))
                    for name in src.ids[a:b].tolist()]

        read = read_files
    else:

        def read_array(a: int, b: int) -> list[np.ndarray]:
            return list((np.asarray(src.read(a, b), dtype=np.float32) + 1.0) / 2.0)

        read = read_array
    return ImageInput(src.n, src.ids, src.labels if labels else None, read, src.name or text)


def _open_file(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PrunekitError(f"cannot read image {path}: {exc}") from exc
    return decode_image(data, str(path))


def _chw(image: Any) -> np.ndarray:
    """An RGB PIL image -> float32 [3, H, W] in [0, 1]."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


# ----------------------------------------------------------------------------- encoders


@dataclass
class Encoder:
    """A loaded image encoder: ``pixels`` prepares images, ``features`` embeds them."""

    kind: str  # clip | dinov2 | siglip | torchscript
    weights: str
    model: torch.nn.Module
    processor: Any = None  # Hugging Face image processor (None for TorchScript)
    size: int | None = None  # TorchScript input side

    @property
    def normalize_default(self) -> bool:
        """Unit-length features by default for the Hugging Face encoders (cosine space)."""
        return self.kind in ENCODERS

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """float32 [3, H, W] images in [0, 1] -> the model's input batch."""
        if self.processor is not None:
            out = self.processor(images=images, do_rescale=False, input_data_format="channels_first",
                                 return_tensors="pt")
            return out["pixel_values"].to(torch.float32)
        return torch.stack([_square(torch.from_numpy(im), self.size) for im in images])

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's image embedding [B, D] float32 (see the module docstring)."""
        pixels = pixels.to(self.device)
        if self.kind == "dinov2":
            out = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        elif self.kind in ("clip", "siglip"):
            out = self.model.get_image_features(pixel_values=pixels)
            out = out if torch.is_tensor(out) else out.pooler_output
        else:
            out = run_user_model(self.model, pixels, f"TorchScript model {self.weights}")
            if not torch.is_tensor(out) or out.ndim < 2 or out.shape[0] != pixels.shape[0]:
                raise PrunekitError(
                    f"TorchScript model {self.weights} must return a [B, D] tensor for a batch of "
                    f"{pixels.shape[0]} images; got {type(out).__name__} "
                    f"{tuple(out.shape) if torch.is_tensor(out) else ''}."
                )
            out = out.flatten(1)
        return out.float()

    def describe(self) -> dict[str, Any]:
        """What a reader of the embeddings file needs to know about the encoder."""
        info: dict[str, Any] = {"encoder": self.kind, "weights": self.weights}
        if self.processor is not None:
            crop = getattr(self.processor, "crop_size", None) or getattr(self.processor, "size", None)
            info["image_size"] = _side(crop)
        else:
            info["image_size"] = self.size
        return info


def _side(size: Any) -> int | None:
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    return get("height") or get("shortest_edge")


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Center square crop, then resize to size x size (antialiased bilinear)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top : top + s, left : left + s]
    if s != size:
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=s > size)[0]
    return x.clamp(0, 1)


def load_encoder(name: str, weights: str | os.PathLike | None = None, *, device: Any = "cpu",
                 size: int | None = None) -> Encoder:
    """Load an encoder by name: ``clip``, ``dinov2``, ``siglip`` or ``torchscript:PATH``.

    ``weights``: a folder written by ``save_pretrained`` or a Hugging Face repo id already
    in the local cache (default :data:`DEFAULT_WEIGHTS`); never downloaded. ``size``: the
    TorchScript model's input side (default 224); the Hugging Face processors know theirs.
    """
    if name.startswith(TORCHSCRIPT):
        return _load_torchscript(name[len(TORCHSCRIPT):], device, size or DEFAULT_TORCHSCRIPT_SIZE)
    if name not in ENCODERS:
        raise PrunekitError(
            f"unknown encoder '{name}'; choose one of: {', '.join(ENCODERS)}, or torchscript:PATH."
        )
    if size is not None:
        raise PrunekitError(f"--size applies to torchscript models; {name}'s processor sets its own.")
    return _load_hf(name, str(weights or DEFAULT_WEIGHTS[name]), device)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No loading bars and no advice about optional packages while a model loads."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _load_hf(kind: str, weights: str, device: Any) -> Encoder:
    try:
        import transformers
    except ImportError:
        raise PrunekitError(
            "the clip/dinov2/siglip encoders need transformers: pip install \"prunekit[embed]\"."
        ) from None
    where = f"--weights {weights}"
    if Path(weights).is_dir():
        _check_hf_weights(Path(weights))
        hint = "Give a folder written by save_pretrained (config.json, weights, preprocessor_config.json)."
    else:
        hint = ("It is neither a folder nor in the local Hugging Face cache: download it once on a "
                f"machine with network access (huggingface-cli download {weights}), or give a "
                "folder written by save_pretrained.")
    with _quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(weights, local_files_only=True)
        except (OSError, ValueError) as exc:
            detail = f" ({_first_line(exc)})" if Path(weights).is_dir() else ""
            raise PrunekitError(f"{where}: no {kind} model found locally{detail}. {hint}") from exc
        if config.model_type != kind:
            raise PrunekitError(
                f"{where} holds a '{config.model_type}' model, not {kind}; pass --encoder "
                f"{config.model_type if config.model_type in ENCODERS else 'NAME'} or other weights."
            )
        try:
            cls = getattr(transformers, MODEL_CLASSES[kind])
            model, info = cls.from_pretrained(weights, use_safetensors=True,  # never a pickled .bin
                                              local_files_only=True, output_loading_info=True)
            processor = transformers.AutoImageProcessor.from_pretrained(weights, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PrunekitError(f"{where}: cannot load the {kind} model ({_first_line(exc)}). {hint}") from exc
    missing = [k for k in info.get("missing_keys", []) if "text" not in k or kind == "dinov2"]
    if missing:
        raise PrunekitError(
            f"{where} lacks weights for {len(missing)} parameters (e.g. {sorted(missing)[0]}); "
            "the model would be partly random. Give complete weights."
        )
    check_finite(model.state_dict().items(), where)
    model = model.float().to(device).eval()  # float32 whatever the checkpoint stores
    return Encoder(kind, weights, model, processor=processor)


def _check_hf_weights(folder: Path) -> None:
    """A save_pretrained folder must hold safetensors weights; a pickled .bin is never opened."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(folder.glob("pytorch_model*.bin"))
    if pickled:
        raise PrunekitError(
            f"--weights {folder} holds only {pickled[0].name}, a pickle; prunekit loads safetensors "
            "only, since opening a pickle can run code. If you trust the file, convert it once "
            f"(torch >= 2.6): {convert_command(folder, pickled[0].name, 'model.safetensors')}"
        )


def _load_torchscript(path: str, device: Any, size: int) -> Encoder:
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(f"TorchScript model not found: {p}. Use --encoder torchscript:PATH.")
    if size < 1:
        raise PrunekitError(f"--size must be >= 1 (got {size}).")
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise PrunekitError(f"cannot load TorchScript model {p}: {_first_line(exc)}") from exc
    return Encoder("torchscript", str(p), model.eval(), size=size)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ----------------------------------------------------------------------------- embedding


@torch.no_grad()
def embed_batches(inputs: ImageInput, encoder: Encoder, *, batch_size: int = 64,
                  normalize: bool | None = None, start: int = 0,
                  starts: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first row, float32 [b, D] features)`` batch by batch from row ``start``
    (or for the batches beginning at ``starts``, which must be multiples of the batch size).

    ``normalize`` (default: the encoder's default) divides each feature by its L2 norm.
    The next batch is read and preprocessed in a background thread while the model runs
    on the current one (decoding images is often slower than a GPU forward pass). A
    batch's features depend on its images only, so batches may be computed in any order
    or by different processes.
    """
    if batch_size < 1:
        raise PrunekitError(f"--batch-size must be >= 1 (got {batch_size}).")
    norm = encoder.normalize_default if normalize is None else bool(normalize)
    encoder.model.eval()
    todo = list(range(start, inputs.n, batch_size) if starts is None else starts)

    def prepare(a: int) -> torch.Tensor:
        return encoder.pixels(inputs.read(a, min(a + batch_size, inputs.n)))

    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(prepare, todo[0]) if todo else None
        for i, a in enumerate(todo):
            pixels = ahead.result()
            ahead = pool.submit(prepare, todo[i + 1]) if i + 1 < len(todo) else None
            feats = encoder.features(pixels)
            if norm:
                feats = torch.nn.functional.normalize(feats, dim=1)
            out = feats.cpu().numpy()
            if not np.isfinite(out).all():
                raise PrunekitError(f"the encoder returned NaN/inf features for rows "
                                    f"{a}..{a + out.shape[0] - 1}.")
            yield a, out


def embed_images(inputs: ImageInput, encoder: Encoder, *, batch_size: int = 64,
                 normalize: bool | None = None, progress: bool = True) -> np.ndarray:
    """All features as one float32 [N, D] array in memory. Deprecated: it goes in the next
    release; use :func:`embed_to_file` (bounded memory, resumable) or :func:`embed_batches`."""
    warnings.warn("prunekit_lfm.embed.embed_images goes in the next release; use embed_to_file, "
                  "or embed_batches for features in memory.", DeprecationWarning, stacklevel=2)
    parts = []
    with counter(inputs.n, desc="embed", progress=progress) as bar:
        for _, feats in embed_batches(inputs, encoder, batch_size=batch_size, normalize=normalize):
            parts.append(feats)
            bar.update(feats.shape[0])
    return np.concatenate(parts)


def embed_to_file(inputs: ImageInput, encoder: Encoder, output: str | os.PathLike, *,
                  batch_size: int = 64, normalize: bool | None = None, dtype: str = "float32",
                  resume: bool = False, progress: bool = True,
                  command: list[str] | None = None, dist: Dist | None = None,
                  shard_rows: int | None = None) -> Path:
    """Embed every image into an embeddings file (core format), resumably.

    Finished batches go to ``OUTPUT.parts/`` (one ``.npy`` each, written atomically) with
    the run's settings; ``resume=True`` continues from there with the same settings and
    gives the same bytes as an uninterrupted run. The file is written atomically at the
    end and the parts are removed. Dataset ``embeddings`` (N, D) ``dtype``, ``ids``,
    ``labels`` when asked; attributes ``encoder``, ``weights``, ``normalize``,
    ``image_size``, ``source`` and the provenance stamp.

    With ``shard_rows`` N the output is a directory of shards ``part_00000.h5``, ... (see
    :mod:`prunekit.io.shard_dir`): shard i holds rows [i N, (i + 1) N) of the single
    file, with the same datasets and attributes (``params`` adds ``shard_rows``).

    Under torchrun (``dist``) rank r embeds batches b = r (mod W) (on resume: its share
    of the batches without a part) and rank 0 writes the file from all the parts; a run
    may be resumed with another number of processes.
    """
    if dtype not in DTYPES:
        raise PrunekitError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype}).")
    output = Path(output)
    if shard_rows is not None:
        shard_ranges(inputs.n, shard_rows)  # checks the number
        check_shard_dir(output)
    dist = dist or Dist()
    norm = encoder.normalize_default if normalize is None else bool(normalize)
    settings = {**encoder.describe(), "normalize": norm, "source": inputs.name, "n": inputs.n,
                "batch_size": int(batch_size), "ids": _ids_digest(inputs.ids)}
    parts = Path(f"{output}.parts")  # the parts do not depend on the sharding of the output
    created = together(dist, lambda: _prepare_parts(parts, settings, resume), main_only=True)
    try:
        todo = _share(parts, inputs.n, batch_size, dist)
        together(dist, lambda: _embed_parts(inputs, encoder, parts, todo, batch_size, norm,
                                            progress and dist.main))
        if dist.main:
            params = {k: v for k, v in settings.items() if k not in ("ids", "n")}
            params["dtype"] = dtype
            if shard_rows is not None:
                params["shard_rows"] = int(shard_rows)
            _write(output, parts, inputs, batch_size, dtype, params, command, shard_rows)
    except PrunekitError:
        if created:  # nothing of a failed fresh run stays behind
            shutil.rmtree(parts, ignore_errors=True)
        raise
    if dist.main:
        shutil.rmtree(parts, ignore_errors=True)
    return output


def _share(parts: Path, n: int, batch_size: int, dist: Dist) -> list[int]:
    """This rank's share of the batches without a part (their first rows).

    They are dealt out in turn: on a fresh run batch b goes to rank b mod W; a resumed run
    shares what is left evenly, whatever W the first run had.
    """
    missing = [a for a in range(0, n, batch_size) if not part_path(parts, a).is_file()]
    barrier(dist)  # every rank has listed the parts before any rank adds one
    return missing[dist.rank :: dist.world_size]


def _embed_parts(inputs: ImageInput, encoder: Encoder, parts: Path, todo: list[int], batch_size: int,
                 norm: bool, progress: bool) -> None:
    """Embed the batches starting at ``todo``, each saved as its part."""
    with counter(sum(min(batch_size, inputs.n - a) for a in todo), desc="embed", progress=progress) as bar:
        for i, (a, feats) in enumerate(embed_batches(inputs, encoder, batch_size=batch_size,
                                                       normalize=norm, starts=todo)):
            if i == 0:  # the width is known now: the parts left and the output must fit
                rows = sum(min(batch_size, inputs.n - b) for b in todo)
                check_space([(part_path(parts, a), rows * feats.shape[1] * 4),
                             (Path(str(parts)[: -len(".parts")]), inputs.n * feats.shape[1] * 4)],
                            "lfm embed")
            with writing(part_path(parts, a), "embedding part"):
                save_part(parts, a, feats)
            bar.update(feats.shape[0])


def _ids_digest(ids: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(map(str, ids.tolist())).encode())
    return h.hexdigest()


def _prepare_parts(parts: Path, settings: dict, resume: bool) -> bool:
    """Create the parts folder, or check the one being resumed; True when created now."""
    config = parts / "settings.json"
    if parts.exists():
        if not resume:
            raise PrunekitError(
                f"{parts} holds an interrupted run of this output; pass --resume to continue it, "
                "or delete the folder to start again."
            )
        try:
            old = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise PrunekitError(f"cannot resume from {parts}: {exc}. Delete the folder to start again.") from exc
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise PrunekitError(
                f"cannot resume {parts}: it was started with other settings ({', '.join(diff)}). "
                "Use the same inputs and options, or delete the folder to start again."
            )
        return False
    parts.mkdir(parents=True)  # OUTPUT may name a folder that does not exist yet
    write_text(config, json.dumps(settings, sort_keys=True))
    return True


def _write(output: Path, parts: Path, inputs: ImageInput, batch_size: int, dtype: str,
           params: dict, command: list[str] | None, shard_rows: int | None) -> None:
    """The embeddings file from the parts, or its rows in shards of ``shard_rows``."""
    dim = load_part(parts, 0, min(batch_size, inputs.n)).shape[1]
    labels = 0 if inputs.labels is None else 8 * inputs.n
    size = inputs.n * dim * np.dtype(dtype).itemsize + ids_bytes(inputs.ids) + labels
    target = output if shard_rows is None else output / shard_name(0)
    check_space([(target, size)], "the embeddings")  # h5py may crash on a full disk
    if shard_rows is None:
        with writing(output, "embeddings file"):
            _write_rows(output, parts, inputs, 0, inputs.n, batch_size, dim, dtype, params, command)
        return
    check_shard_dir(output)  # again: the directory may have changed while embedding
    with writing(output, "shard directory"), atomic_dir(output) as tmp:
        for i, (a, b) in enumerate(shard_ranges(inputs.n, shard_rows)):
            _write_rows(tmp / shard_name(i), parts, inputs, a, b, batch_size, dim, dtype, params,
                        command)


def _write_rows(path: Path, parts: Path, inputs: ImageInput, a: int, b: int, batch_size: int,
                dim: int, dtype: str, params: dict, command: list[str] | None) -> None:
    """Rows [a, b) as an embeddings file, read from the parts batch by batch."""
    with atomic_h5(path) as f:
        ds = f.create_dataset("embeddings", shape=(b - a, dim), dtype=dtype,
                              chunks=(min(b - a, max(1, 65536 // dim)), dim))
        for start in range(a - a % batch_size, b, batch_size):
            rows = min(batch_size, inputs.n - start)
            block = load_part(parts, start, rows)
            if block.shape != (rows, dim):
                raise PrunekitError(f"{part_path(parts, start)} has shape {block.shape}; delete "
                                    f"{parts} and embed again.")
            lo, hi = max(a, start), min(b, start + rows)
            ds[lo - a : hi - a] = block[lo - start : hi - start].astype(dtype)
        write_ids(f, "ids", inputs.ids[a:b])
        if inputs.labels is not None:
            f.create_dataset("labels", data=inputs.labels[a:b].astype(np.int64))
        for k in ("encoder", "weights", "normalize", "source"):
            f.attrs[k] = params[k]
        f.attrs["image_size"] = -1 if params.get("image_size") is None else int(params["image_size"])
        stamp(f.attrs, params, command)
