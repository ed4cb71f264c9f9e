"""Checks the plug-in makes before it trusts a file, follows an id, or starts a write.

* :func:`contained_path` -- an id (a relative file name) joined to its folder, refused when
  it is absolute, climbs out with ``..`` or resolves (through a symlink) outside the folder;
* :func:`check_finite` -- loaded weights must be finite: NaN weights give NaN images
  without any error further down;
* :func:`require_safe_torch_load` -- ``torch.load(weights_only=True)`` only refuses pickled
  code from torch 2.6 on (CVE-2025-32434);
* :func:`check_space` and :func:`writing` -- free space is checked before a write whose size
  is known, and a failed write (full disk, read-only file system, quota) becomes one
  PrunekitError naming the file; the atomic writers have removed the partial file by then.

Nothing here imports torch at module level, so the data helpers stay importable without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError
from prunekit.runtime.memory import human

SAFE_TORCH = (2, 6)  # torch.load(weights_only=True) is bypassable before 2.6 (CVE-2025-32434)
SPACE_MARGIN = 64 * 1024  # bytes of file-system metadata and HDF5 headers beyond the data
SPACE_SLACK = 0.01  # and 1 % of the data: block rounding, chunk indexes


# ----------------------------------------------------------------------------- ids as paths


def contained_path(root: str | os.PathLike, name: str, what: str = "id") -> Path:
    """``root / name``, refused unless it stays inside ``root`` once symlinks are resolved.

    ``name`` is a relative path as ids store them (``cat/001.png``); an absolute name, a
    ``..`` that leaves the folder, or a symlink pointing outside it is a PrunekitError, so
    ids from a file someone else wrote cannot make the command read ``/etc/passwd``.
    """
    text = str(name)
    if text == "" or "\x00" in text:
        raise PrunekitError(f"{what} {text!r} is not a file name inside {root}.")
    rel = Path(text)
    if rel.is_absolute() or text.startswith(("/", "\\")) or rel.drive:
        raise PrunekitError(
            f"{what} '{text}' is an absolute path; ids must be file names relative to {root}. "
            "Rebuild the file from the folder (prunekit lfm embed / encode)."
        )
    if ".." in rel.parts:
        raise PrunekitError(
            f"{what} '{text}' climbs out of {root} with '..'; ids must name files inside it."
        )
    base = Path(os.path.realpath(root))
    path = Path(root) / rel
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        raise PrunekitError(
            f"{what} '{text}' leads outside {root} (to {real}, through a symlink); copy the file "
            "into the folder or point at the folder that holds it."
        )
    return path


def check_relative_name(name: str, what: str) -> str:
    """A name that is safe to join to a folder later: relative, no ``..`` (lexical check only)."""
    rel = Path(str(name))
    if str(name).startswith(("/", "\\")) or rel.is_absolute() or ".." in rel.parts:
        raise PrunekitError(
            f"{what} '{name}' is absolute or contains '..'; such a name could point outside any "
            "folder it is joined to. Rename the member."
        )
    return str(name)


# ----------------------------------------------------------------------------- weights


def first_nonfinite(named: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, or None."""
    import torch

    for name, tensor in named:
        floating = torch.is_tensor(tensor) and tensor.is_floating_point()
        if floating and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite(named: Iterable[tuple[str, Any]], where: str) -> None:
    """Refuse weights with NaN/inf: the first bad tensor and ``where`` (the file) are named."""
    bad = first_nonfinite(named)
    if bad is not None:
        raise PrunekitError(
            f"NaN/inf weights in {where} (first: tensor '{bad}'); the model would produce NaN or "
            "garbage. Use an intact copy of the file."
        )


def require_safe_torch_load(what: str) -> None:
    """Refuse to call ``torch.load`` on ``what`` when torch is older than 2.6."""
    import torch

    version = str(torch.__version__).split("+")[0]
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        parts = (0, 0)
    if parts < SAFE_TORCH:
        raise PrunekitError(
            f"reading {what} needs torch >= 2.6 (found {torch.__version__}): earlier versions of "
            "torch.load(weights_only=True) can be made to run code (CVE-2025-32434). "
            "Upgrade torch: pip install -U 'torch>=2.6'."
        )


def convert_command(folder: str | os.PathLike, binary: str, target: str) -> str:
    """A one-line command turning a pickled weights file into safetensors (for a trusted file)."""
    src, dst = Path(folder) / binary, Path(folder) / target
    return (
        'python -c "import torch; from safetensors.torch import save_file; '
        f"sd = torch.load({str(src)!r}, weights_only=True); "
        "save_file({k: v.contiguous().clone() for k, v in sd.items()}, "
        f"{str(dst)!r}, metadata={{'format': 'pt'}})\""
    )


# ----------------------------------------------------------------------------- user code


def run_user_model(model: Any, x: Any, what: str) -> Any:
    """``model(x)`` for a model the user supplied (TorchScript runs its own code): whatever it
    raises becomes one PrunekitError naming the model and its message."""
    try:
        return model(x)
    except MemoryError:
        raise
    except Exception as exc:  # any error of the user's code; the output is not written
        raise PrunekitError(
            f"{what} failed on a batch of {x.shape[0]} images: {error_line(exc)}"
        ) from exc


def error_line(exc: BaseException) -> str:
    """One line of an error: TorchScript's raised exception (its last line), else the first."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    script = lines[0].startswith("The following operation failed in the TorchScript interpreter")
    return (lines[-1] if script else lines[0])[:300]


# ----------------------------------------------------------------------------- disk space


def _existing_dir(path: Path) -> Path:
    """The directory a write of ``path`` lands in, or its first existing ancestor."""
    probe = Path(os.path.realpath(path)).parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def needed_bytes(nbytes: float) -> int:
    """Bytes to ask the file system for: the data plus headroom for metadata."""
    return int(nbytes * (1 + SPACE_SLACK) + SPACE_MARGIN)


def check_space(writes: Iterable[tuple[str | os.PathLike, float]], what: str) -> None:
    """Refuse before writing when the files ``(path, bytes)`` cannot fit on their file systems.

    Writes to the same file system are added up (a samples file and its PNG grid). The
    message names the path, the bytes needed and the bytes free.
    """
    per_device: dict[int, list] = {}
    for path, nbytes in writes:
        d = _existing_dir(Path(path))
        try:
            dev = os.stat(d).st_dev
        except OSError:
            continue
        entry = per_device.setdefault(dev, [d, 0.0, []])
        entry[1] += needed_bytes(nbytes)
        entry[2].append(str(path))
    for d, need, paths in per_device.values():
        try:
            free = shutil.disk_usage(d).free
        except OSError:
            continue
        if need > free:
            raise PrunekitError(
                f"{what}: writing {', '.join(paths)} needs about {human(need)} but only "
                f"{human(free)} "
                f"is free on the file system of {d}. Free some space or write elsewhere."
            )


def is_write_error(exc: BaseException) -> bool:
    """An error of the file system while writing (OSError, or safetensors' own error type)."""
    return isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError"


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Turn a failed write of ``path`` (full disk, I/O error) into one PrunekitError.

    Use it around an atomic write: the temporary file is already gone when the error
    arrives here, so nothing partial is left under any name.
    """
    try:
        yield
    except WriteError:
        raise
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, PrunekitError) else exc
        if cause is None or not is_write_error(cause):
            raise
        raise WriteError(f"cannot write {what} {path}: {_reason(cause)}.") from exc


class WriteError(PrunekitError):
    """A write that failed (the file system's error, said once, naming the file)."""


FULL = "the file system is full; free some space or write elsewhere"


def _reason(exc: BaseException) -> str:
    """A short reason: the errno's text ('No space left on device'), else the first line."""
    code = getattr(exc, "errno", None)
    text = str(exc).strip()
    if code in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in text or "No space left" in text:
        return f"{os.strerror(errno.ENOSPC)} ({FULL})"
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    if " requested and " in text and text.endswith(" written"):  # numpy's short write
        return f"short write, {text} ({FULL})"
    return text.splitlines()[0][:200] if text else type(exc).__name__
