"""Stability sweeps: one row of numbers per subset, over pruning fractions and dimensions.

A row holds ``pr``, ``n_kept``, ``n_sources``, ``n_retained``, ``unchanged_fraction``,
``path_deviation_median`` and ``path_deviation_p95`` (see :mod:`.assign`), plus what
identifies the subset (its selection file or method) and, in a dimension sweep, ``dim``.

:func:`stability` is ``prunekit stability`` as one call (``pk.stability``): it checks the
options (:func:`check_study`), runs a study of given data or a dimension sweep on synthetic
data, and returns a :class:`StabilityStudy` (JSON, table and figure of the command).

One seed feeds several draws here (the noise sources, the random subsets, the synthetic
data); each has its own stream (:mod:`prunekit.seeds`), so none repeats another's numbers.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit._dictlike import DictLike
from prunekit._version import __version__
from prunekit.errors import PrunekitError
from prunekit.flow.assign import compare_subsets
from prunekit.flow.ode import MAX_STEPS, SOLVER
from prunekit.flow.plot import stability_figure
from prunekit.flow.synthetic import gaussian_mixture
from prunekit.flow.velocity import DEFAULT_BUFFER, ClosedFormField, resolve_dtype
from prunekit.io.atomic import check_input, write_bytes
from prunekit.io.embeddings import Embeddings, load_embeddings
from prunekit.io.npzio import load_npy
from prunekit.io.provenance import jsonable
from prunekit.methods import score
from prunekit.params import Param, ParamError, pick, seed_param, takes, validate
from prunekit.runtime.memory import check_fits
from prunekit.runtime.progress import track
from prunekit.seeds import check_seed, role_rng, role_seed
from prunekit.selection.scores import Scores, load_scores
from prunekit.selection.subset import (
    BALANCES,
    Selection,
    labels_for,
    load_selection,
    resolve_rows,
    select,
)

DEFAULT_SOURCES = 256
# Training rows the closed-form flow uses at most: every velocity evaluation touches each of
# them, so beyond this a seeded uniform sample of the data stands for the full set.
STABILITY_SAMPLE = 100_000
GMM = "gmm"  # the data of a dimension sweep: a Gaussian mixture drawn per dimension
GMM_DEFAULTS = {"n": 1000, "components": 10, "spread": 0.5}

#: How :func:`stability` picks the subsets, the noise and the integration: its keyword
#: arguments and the options of ``prunekit stability``, in the order of ``--help``.
STUDY_PARAMS = (
    Param("selections", "path", (),
          "Selection file(s) to compare with the full set: --selection A.h5 B.h5 (put DATA "
          "first).", multiple=True, objects=(Selection,), flag="--selection", metavar="FILE ..."),
    Param("prs", "float", (),
          "Pruned fraction(s) to build subsets for: --pr 0.25 0.5 0.75 (or 0.25,0.5,0.75).",
          low=0, high=1, open_high=True, multiple=True, flag="--pr", metavar="P ..."),
    Param("scores", "path", None,
          "Choose the --pr subsets from this scores file (default: random).", nullable=True,
          objects=(Scores,)),
    Param("balance", "choice", "none",
          "With --scores: how quotas are spread, as in `prunekit select`.", choices=BALANCES),
    Param("invert", "bool", False, "With --scores: keep the lowest scores first."),
    Param("sources", "path", None, "Noise points x0 as an (M, d) .npy file, used as they are.",
          nullable=True, objects=(np.ndarray, list, tuple)),
    Param("n_sources", "int", None,
          f"Draw M noise points x0 ~ N(0, I) [default: {DEFAULT_SOURCES}].", low=1,
          nullable=True, cli_range=True),
    seed_param("Seed of the sources, random subsets and synthetic data (each its own stream)."),
    Param("steps", "int", 100, f"Euler/Heun steps K on t_k = k/K (at most {MAX_STEPS}).",
          low=1, cli_range=True),
    SOLVER,
    Param("dtype", "choice", "float32", "Compute precision.", choices=("float32", "float64")),
    Param("sample", "int", STABILITY_SAMPLE,
          "Data with more usable rows are represented by a seeded uniform sample of this many "
          "(the subsets keep their rows in it); 0 = every row.", low=0, nullable=True,
          cli_range=True),
    Param("block", "int", None, "Training points per block (default: sized to ~64 MiB of logits).",
          low=1, nullable=True, cli_range=True),
)
#: The synthetic data of a ``dims`` sweep (None: :data:`GMM_DEFAULTS`).
SWEEP_PARAMS = (
    Param("dims", "int", (),
          "Sweep these dimensions on synthetic data (DATA = gmm): --dims 16 256 4096.", low=1,
          multiple=True, metavar="D ..."),
    Param("n", "int", None, f"--dims: points of the mixture [default: {GMM_DEFAULTS['n']}].",
          low=1, nullable=True, cli_range=True),
    Param("components", "int", None,
          f"--dims: mixture components [default: {GMM_DEFAULTS['components']}].", low=1,
          nullable=True, cli_range=True),
    Param("spread", "float", None,
          f"--dims: spread around component means [default: {GMM_DEFAULTS['spread']}].",
          nullable=True),
)
STABILITY_PARAMS = STUDY_PARAMS + SWEEP_PARAMS
_PRS = pick(STUDY_PARAMS, "prs")[0]


@dataclass
class Subset:
    """Rows of a training set (positions 0..n-1 of the array used) and how they were chosen."""

    pr: float
    rows: np.ndarray
    info: dict = field(default_factory=dict)  # extra row fields, e.g. the selection file


def draw_sources(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` noise points x0 ~ N(0, I_dim) (float64), from the ``sources`` stream of ``seed``."""
    if n < 1:
        raise PrunekitError(f"the number of sources must be at least 1, got {n}.")
    check_fits(8.0 * n * dim, f"{n} noise sources of dimension {dim}")
    return role_rng(seed, "sources").standard_normal((n, dim))


def load_sources(path: str | os.PathLike, dim: int) -> np.ndarray:
    """Noise points x0 from an (M, dim) float ``.npy`` file (never unpickled), checked."""
    p = Path(path)
    if not p.exists():
        raise PrunekitError(f"sources file not found: {p}. Give an .npy file of shape (M, {dim}).")
    check_input(p, "sources file")  # a directory or FIFO, named
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise PrunekitError(
            f"sources file {p} is not an .npy file (an .npz or other format?); save the (M, {dim}) "
            "array with numpy.save."
        )
    try:
        x0 = load_npy(p, mmap=True)
    except (ValueError, OSError, EOFError) as exc:
        raise PrunekitError(f"cannot read sources file {p} as .npy: {exc}") from exc
    if x0.ndim != 2 or x0.shape[1] != dim or x0.shape[0] == 0 or x0.dtype.kind != "f":
        raise PrunekitError(
            f"sources file {p} holds a {x0.dtype} array of shape {x0.shape}; it must be float, "
            f"(M, {dim}) to match the data's dimension."
        )
    check_fits(8.0 * x0.size, f"the sources of {p}")
    x0 = np.array(x0, dtype=np.float64)
    if not np.isfinite(x0).all():
        raise PrunekitError(f"sources file {p} has NaN/inf values; every source must be finite.")
    return x0


def check_prs(prs: Sequence[float]) -> list[float]:
    """Pruned fractions, each in [0, 1) (the ``prs`` Param of :data:`STUDY_PARAMS`), at least one."""
    out = [float(p) for p in _PRS.check(prs)]
    if not out:
        raise ParamError("{prs} are the fractions removed, each in [0, 1); got nothing.")
    return out


def selection_subset(sel: Selection, emb: Embeddings, name: str, info: dict | None = None) -> Subset:
    """The usable rows of ``emb`` that ``sel`` keeps (by ids, or by position).

    Repeats (oversampling ``counts``) are ignored: the closed-form field depends on which
    points are present.
    """
    src = np.unique(resolve_rows(sel, emb.n_total, emb.ids, selection_name=name, target_name=emb.name))
    _check_same_data(sel, emb, name)  # after the row count, which resolve_rows names
    compact = np.searchsorted(emb.rows, src)
    bad = (compact >= emb.n) | (emb.rows[np.minimum(compact, emb.n - 1)] != src)
    if bad.any():
        raise PrunekitError(
            f"{name} keeps rows that {emb.name} dropped as non-finite (e.g. row {src[bad][0]}); "
            "select from scores of the same finite rows."
        )
    return Subset(pr=float(sel.pr), rows=compact, info=dict(info or {}))


def _check_same_data(sel: Selection, emb: Embeddings, name: str) -> None:
    """A selection made from other embeddings (another fingerprint) is refused unless it is
    matched by string ids, which name the same items in any embedding of them (a CLIP
    selection studied on VAE latents). Positions and integer ids (usually positions too)
    would pick unrelated rows."""
    mine, theirs = sel.source_fingerprint, emb.fingerprint
    if not mine or not theirs or mine == theirs:
        return
    if sel.ids is not None and emb.ids is not None and sel.ids.dtype == object \
            and emb.ids.dtype == object:
        return
    raise PrunekitError(
        f"{name} was made from other embeddings than {emb.name} (source fingerprints "
        f"{mine[:12]} vs {theirs[:12]}), and its rows are matched by "
        "position or integer id. Pass the embeddings it was made from."
    )


def scored_subsets(
    scores: Scores,
    emb: Embeddings,
    prs: Sequence[float],
    *,
    balance: str = "none",
    invert: bool = False,
    seed: int = 0,
    name: str | None = None,
) -> list[Subset]:
    """One subset per pr, chosen by :func:`prunekit.select` from ``scores``.

    ``name`` is how errors call the scores (default: after their source embeddings).
    """
    name = name or f"selection of {scores.source}"
    # Labels for balance="labels": the scores' own, else those of the embeddings.
    labels = labels_for(scores, emb) if balance == "labels" and scores.labels is None else None
    out = []
    for pr in check_prs(prs):
        sel = select(scores, pr, balance=balance, invert=invert, seed=seed, labels=labels)
        info = {"method": scores.method, "balance": balance, "invert": bool(invert)}
        out.append(selection_subset(sel, emb, name, info))
    return out


def random_pruned_subsets(emb: Embeddings, prs: Sequence[float], *, seed: int = 0) -> list[Subset]:
    """Uniform random subsets, as ``prunekit score --method random`` + ``select`` make them.

    All pr values share one draw of scores (the ``random subsets`` stream of ``seed``), so
    the subsets are nested.
    """
    scores = score(emb, "random", seed=role_seed(seed, "random subsets"), progress=False)
    return scored_subsets(scores, emb, prs, seed=seed)


def stability_rows(
    x1: np.ndarray,
    subsets: Sequence[Subset],
    x0: np.ndarray,
    *,
    steps: int = 100,
    solver: str = "euler",
    dtype: str = "float32",
    block: int | None = None,
    engine=None,
    progress: bool = True,
) -> list[dict]:
    """Compare the full training set ``x1`` with each subset on the noise points ``x0``.

    Blocks of noise points (and groups of subsets) run as tasks on ``engine`` (default: the
    current one); the rows are the same on every engine (:func:`.assign.compare_subsets`).
    """
    x0 = np.asarray(x0)
    if x0.ndim != 2 or x0.shape[1] != np.shape(x1)[1]:
        raise PrunekitError(
            f"sources have shape {x0.shape} but the training set has dimension {np.shape(x1)[1]}; "
            f"give an (M x {np.shape(x1)[1]}) array."
        )
    check_fits(stability_bytes(np.shape(x1), len(subsets), x0.shape[0], dtype),
               f"the stability runs ({len(subsets)} subsets, {x0.shape[0]} sources)")
    fld = ClosedFormField(x1, dtype=dtype, block=block)
    comps = compare_subsets(
        fld, [s.rows for s in subsets], x0, steps=steps, solver=solver, engine=engine,
        progress=progress,
    )
    return [{"pr": s.pr, **s.info, **c.summary()} for s, c in zip(subsets, comps, strict=True)]


def dimension_study(
    dims: Sequence[int],
    prs: Sequence[float],
    *,
    n: int = 1000,
    components: int = 10,
    spread: float = 0.5,
    n_sources: int = 256,
    seed: int = 0,
    steps: int = 100,
    solver: str = "euler",
    dtype: str = "float32",
    block: int | None = None,
    sample: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """The stability curve of a Gaussian mixture for each dimension (random subsets).

    Data, subsets and sources come from ``seed`` in every dimension (each from its own
    stream); rows carry ``dim``. ``block`` and ``sample`` act as in :func:`stability`: a
    mixture of more than ``sample`` points is represented by a seeded sample of them.
    """
    prs = check_prs(prs)
    seed = check_seed(seed)
    bad = [d for d in dims if int(d) < 1]
    if bad:  # before any work, not after the first dimensions ran
        raise PrunekitError(f"dimensions must be positive integers, got {bad[0]}.")
    if not dims:
        raise PrunekitError("give at least one dimension to sweep.")
    top = max(int(d) for d in dims)
    n_train = n if not sample else min(n, sample)
    check_fits(20.0 * n * top + stability_bytes((n_train, top), len(prs), n_sources, dtype),
               f"the largest dimension of the sweep ({top})")
    rows: list[dict] = []
    for dim in track(list(dims), desc="dimensions", progress=progress):
        gmm = gaussian_mixture(n, int(dim), components, spread=spread, seed=seed)
        emb = Embeddings.from_array(gmm.points, labels=gmm.labels, name=f"gmm(dim={dim})")
        subsets = random_pruned_subsets(emb, prs, seed=seed)
        x0 = draw_sources(n_sources, int(dim), seed)
        x1, subsets = _training_set(emb, subsets, sample or None, seed)
        found = stability_rows(x1, subsets, x0, steps=steps, solver=solver, dtype=dtype,
                               block=block, progress=progress)
        rows.extend({"dim": int(dim), **r} for r in found)
    return rows


def stability_bytes(shape: Sequence[int], n_subsets: int, n_sources: int, dtype: str) -> float:
    """Memory of :func:`stability_rows`: the centred training copy, one state per run (and
    the solver's temporaries), the (sources x block) logit buffer."""
    n, d = int(shape[0]), int(shape[1])
    item = resolve_dtype(dtype).itemsize
    return item * (n * (d + 1) + 4.0 * (n_subsets + 1) * n_sources * d + 2 * DEFAULT_BUFFER)


@dataclass(frozen=True, eq=False)
class StabilityStudy(DictLike):
    """What :func:`stability` found: its ``settings`` and one row per subset.

    :meth:`to_json` is the document ``prunekit stability -o`` writes, :meth:`render` the
    table it prints, :meth:`figure`/:meth:`plot` the curves of ``--plot``. The study also
    reads like the dict :meth:`to_dict` (``study["rows"]``).
    """

    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    prunekit_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {"prunekit_version": self.prunekit_version, "settings": self.settings,
                "rows": self.rows}

    def to_json(self, command: Sequence[str] | None = None) -> str:
        """The JSON document with the ``command`` that ran it (default: ``sys.argv``)."""
        doc = {"prunekit_version": self.prunekit_version,
               "command": list(sys.argv if command is None else command),
               "settings": self.settings, "rows": self.rows}
        return json.dumps(jsonable(doc), indent=2) + "\n"

    def render(self) -> str:
        """The rows as a text table (a ``dim`` column in a dimension sweep)."""
        rows = self.rows
        head = f"{'dim':>6} " if rows and "dim" in rows[0] else ""
        lines = [head + f"{'subset':<22} {'pr':>6} {'kept':>7} {'retained':>8} {'unchanged':>9} "
                 f"{'dev.median':>10} {'dev.p95':>9}"]
        for r in rows:
            uf = "n/a" if r["unchanged_fraction"] is None else f"{r['unchanged_fraction']:.4f}"
            lead = f"{r['dim']:>6} " if head else ""
            lines.append(
                lead + f"{_subset_name(r)[:22]:<22} {r['pr']:>6.3f} {r['n_kept']:>7} "
                f"{r['n_retained']:>8} {uf:>9} {r['path_deviation_median']:>10.4g} "
                f"{r['path_deviation_p95']:>9.4g}"
            )
        return "\n".join(lines)

    def title(self) -> str:
        """The figure's title: the data and the integration settings."""
        s = self.settings
        what = (f"synthetic GMM ({s['gmm']['n']} points)" if s["data"] == GMM
                else f"{s['data']} ({s['n_train']} x {s['dim']})")
        return (f"closed-form flow: {what}, {s['n_sources']} sources, {s['solver']} "
                f"K={s['steps']}, {s['dtype']}")

    def figure(self) -> bytes:
        """The curves as PNG bytes (needs matplotlib, ``prunekit[plot]``)."""
        return stability_figure(self.rows, title=self.title())

    def plot(self, path: str | os.PathLike) -> Path:
        """Write :meth:`figure` to ``path`` atomically; returns the path."""
        write_bytes(path, self.figure())
        return Path(path)

    def __repr__(self) -> str:
        return (f"StabilityStudy({len(self.rows)} rows, data {self.settings.get('data')!r}, "
                f"subsets {self.settings.get('subsets')!r})")


def _subset_name(row: dict[str, Any]) -> str:
    """A row's subset in the table: its selection file, or method/balance/inv."""
    if "selection" in row:
        return Path(row["selection"]).name
    name = str(row.get("method", ""))
    if row.get("balance", "none") != "none":
        name += f"/{row['balance']}"
    return name + ("/inv" if row.get("invert") else "")


class StudyOptionError(ParamError):
    """Options of :func:`stability` that do not go together, said for the library
    (``message``) and, in other words, for ``prunekit stability`` (``cli``)."""

    def __init__(self, message: str, cli: str) -> None:
        super().__init__(_literal(message), cli=_literal(cli))


def _literal(text: str) -> str:
    """``text`` as a ParamError template that says just that."""
    return text.replace("{", "{{").replace("}", "}}")


# The options check_study looks at.
_TOGETHER = ("selections", "prs", "scores", "balance", "invert", "sources", "n_sources", "dims",
             *GMM_DEFAULTS)


def check_options(data: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of :func:`stability` (any of :data:`STABILITY_PARAMS`; the rest take
    their defaults) checked as it checks them, before any work: each value by its Param,
    the steps against MAX_STEPS, then which go together (:func:`check_study`). Returns
    every option's normalised value. ``prunekit stability`` calls it before it starts an
    engine."""
    values = validate(None, STABILITY_PARAMS, options)
    _check_together(data, values)
    return values


def _check_together(data: Any, values: Mapping[str, Any]) -> None:
    if values["steps"] > MAX_STEPS:
        raise ParamError("{steps:{}} is above {}: memory does not grow with the steps but the "
                         "work does, and more steps change the result less than float32 "
                         "resolves.", values["steps"], MAX_STEPS)
    check_study(data, **{k: values[k] for k in _TOGETHER})


def check_study(
    data: Any,
    *,
    selections: Sequence[Any] = (),
    prs: Sequence[float] = (),
    scores: Any = None,
    balance: str = "none",
    invert: bool = False,
    sources: Any = None,
    n_sources: int | None = None,
    dims: Sequence[int] = (),
    n: int | None = None,
    components: int | None = None,
    spread: float | None = None,
) -> None:
    """Refuse options of :func:`stability` that do not go together (StudyOptionError),
    before any work: what a ``dims`` sweep takes, then how the subsets are given."""
    if dims:
        _check_sweep(data, selections, prs, scores, sources, balance, invert)
        return
    if isinstance(data, str) and data == GMM:
        raise StudyOptionError(
            "data 'gmm' means synthetic data for a dims sweep; give dims, e.g. dims=[16, 256].",
            "DATA 'gmm' means synthetic data for a --dims sweep; add --dims, e.g. --dims 16 256.")
    used = [k for k, v in (("n", n), ("components", components), ("spread", spread))
            if v is not None]
    if used:
        raise StudyOptionError(
            f"{used[0]} sets the synthetic data of a dims sweep; drop it or give dims.",
            f"--{used[0]} sets the synthetic data of a --dims sweep; drop it or add --dims.")
    _check_subsets(selections, prs, scores, balance, invert)
    if sources is not None and n_sources is not None:
        raise StudyOptionError("give either sources or n_sources, not both.",
                               "give either --sources FILE or --n-sources M, not both.")


def _check_sweep(data: Any, selections: Sequence[Any], prs: Sequence[float], scores: Any,
                 sources: Any, balance: str = "none", invert: bool = False) -> None:
    """A dims sweep draws its data: DATA 'gmm', pr values, nothing read from files."""
    if not (isinstance(data, str) and data == GMM):
        raise StudyOptionError(
            "dims sweeps synthetic Gaussian-mixture data: pass data as the word 'gmm'.",
            "--dims sweeps synthetic Gaussian-mixture data: pass DATA as the word 'gmm'.")
    for name, flag, value in (("selections", "selection", selections), ("scores", "scores", scores),
                              ("sources", "sources", sources)):
        if _given(value):
            why = "does not apply to a {}dims sweep (the data are drawn per dimension)."
            raise StudyOptionError(f"{name} {why.format('')}", f"--{flag} {why.format('--')}")
    if balance != "none" or invert:
        raise StudyOptionError(
            "balance and invert choose from a scores file; a dims sweep takes random subsets.",
            "--balance and --invert choose from a scores file; a --dims sweep takes random "
            "subsets.")
    if not prs:
        raise StudyOptionError(
            "dims needs the pruned fractions: give prs, e.g. prs=[0.25, 0.5, 0.75].",
            "--dims needs the pruned fractions: add --pr, e.g. --pr 0.25 0.5 0.75.")


def _given(value: Any) -> bool:
    """An option was given: not None, and not an empty list (arrays count as given)."""
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def _check_subsets(selections: Sequence[Any], prs: Sequence[float], scores: Any, balance: str,
                   invert: bool) -> None:
    """The subsets come from selections, or from pr values (with scores for balance/invert)."""
    if bool(selections) == bool(prs):
        raise StudyOptionError(
            "give the subsets either as selections or as pr values (one of the two).",
            "give the subsets either as --selection FILE ... or as --pr P ... (one of the two).")
    if selections and (scores is not None or balance != "none" or invert):
        raise StudyOptionError(
            "scores, balance and invert build subsets from pr values; not with selections.",
            "--scores, --balance and --invert build subsets with --pr; not with --selection.")
    if scores is None and (balance != "none" or invert):
        raise StudyOptionError(
            "balance and invert choose from a scores file: give scores too.",
            "--balance and --invert choose from a scores file: add --scores SCORES.h5.")


@takes(STABILITY_PARAMS)
def stability(
    data: Embeddings | np.ndarray | str | os.PathLike,
    *,
    selections: Sequence[Selection | str | os.PathLike] = (),
    prs: Sequence[float] = (),
    scores: Scores | str | os.PathLike | None = None,
    balance: str = "none",
    invert: bool = False,
    sources: np.ndarray | str | os.PathLike | None = None,
    n_sources: int | None = None,
    seed: int = 0,
    steps: int = 100,
    solver: str = "euler",
    dtype: str = "float32",
    block: int | None = None,
    key: str | None = None,
    drop_nonfinite: bool = False,
    sample: int | None = STABILITY_SAMPLE,
    id_key: str | None = None,
    dims: Sequence[int] = (),
    n: int | None = None,
    components: int | None = None,
    spread: float | None = None,
    progress: bool = False,
) -> StabilityStudy:
    """Integrate the closed-form flow of ``data`` and of subsets of it from the same noise.

    The subsets are either ``selections`` (objects or files) or built here for each ``prs``
    value: from ``scores`` as :func:`prunekit.select` makes them (``balance``, ``invert``),
    or uniformly at random. The noise points are ``sources`` (an (M, d) array or ``.npy``
    file) or ``n_sources`` draws (default 256) of N(0, I) from ``seed``. Returns a
    :class:`StabilityStudy`: ``settings`` and one row per subset (see the module doc).

    Data with more than ``sample`` usable rows (None or 0: no limit) are represented by a seeded
    uniform sample of ``sample`` rows (the ``stability sample`` stream of ``seed``): the
    full field is the sample's, each subset keeps its rows that fall in the sample (a row's
    ``n_kept`` counts those, ``n_kept_data`` all it keeps). The runs go as tasks to the
    run context's engine (:func:`prunekit.runtime`); every engine gives the same rows. A
    path ``data`` is read with ``key``/``id_key`` (None: the run context's); selections
    match its rows by those ids.

    ``data="gmm"`` with ``dims``: a dimension sweep instead, random subsets at each ``prs``
    of a Gaussian mixture of ``n`` points, ``components`` and ``spread`` (defaults
    :data:`GMM_DEFAULTS`) drawn per dimension (:func:`dimension_study`).

    The options are declared in :data:`STABILITY_PARAMS` (their help is ``prunekit
    stability --help``); a bad value, or options that do not go together, are refused
    before any work (:func:`check_options`).
    """
    _check_together(data, locals())  # each value was checked by its Param (@takes)
    prs = list(prs)
    run = {"steps": steps, "solver": solver, "dtype": dtype}
    if dims:
        gmm = {k: GMM_DEFAULTS[k] if v is None else v
               for k, v in (("n", n), ("components", components), ("spread", spread))}
        run.update(block=block, sample=sample)
        return _dimension_sweep(list(dims), prs, gmm, n_sources, seed, run, progress)
    emb = _as_embeddings(data, key, drop_nonfinite, id_key)
    subsets, how = _subsets(emb, selections, prs, scores, balance, invert, seed)
    x0 = _sources(sources, n_sources, emb.dim, seed)
    x1, subsets = _training_set(emb, subsets, sample or None, seed)  # 0: every row
    rows = stability_rows(x1, subsets, x0, block=block, progress=progress, **run)
    settings = {
        **run, "seed": seed, "data": _data_name(data, emb), "key": emb.key,
        "n_train": int(x1.shape[0]), "dim": emb.dim,
        "n_data": emb.n, "sample": None if x1.shape[0] == emb.n else int(x1.shape[0]),
        "n_sources": int(x0.shape[0]),
        "sources": str(sources) if isinstance(sources, (str, os.PathLike)) else None,
        "subsets": how, "scores": str(scores) if isinstance(scores, (str, os.PathLike)) else None,
        "balance": balance, "invert": bool(invert),
    }
    return StabilityStudy(settings=settings, rows=rows)


def _dimension_sweep(dims: list[int], prs: list[float], gmm: dict[str, Any],
                     n_sources: int | None, seed: int, run: dict[str, Any],
                     progress: bool) -> StabilityStudy:
    """The study of a ``dims`` sweep on synthetic data (see :func:`stability`)."""
    n_sources = DEFAULT_SOURCES if n_sources is None else n_sources
    rows = dimension_study(dims, prs, n_sources=n_sources, seed=seed, progress=progress,
                           **gmm, **run)
    settings = {**run, "seed": seed, "data": GMM, "dims": dims, "gmm": gmm,
                "n_sources": n_sources, "subsets": "random"}
    return StabilityStudy(settings=settings, rows=rows)


def _subsets(emb: Embeddings, selections: Sequence[Any], prs: list[float], scores: Any,
             balance: str, invert: bool, seed: int) -> tuple[list[Subset], str]:
    """The subsets of a study and how they were made (``selection``, ``scores``, ``random``)."""
    if selections:
        return [_selection_subset(s, emb) for s in selections], "selection"
    if scores is not None:
        sc = scores if isinstance(scores, Scores) else load_scores(scores)
        name = f"--scores {scores}" if not isinstance(scores, Scores) else None
        subsets = scored_subsets(sc, emb, prs, balance=balance, invert=invert, seed=seed, name=name)
        return subsets, "scores"
    return random_pruned_subsets(emb, prs, seed=seed), "random"


def _sources(sources: Any, n_sources: int | None, dim: int, seed: int) -> np.ndarray:
    """The noise points: given, read from an ``.npy`` file, or drawn from ``seed``."""
    if sources is None:
        return draw_sources(DEFAULT_SOURCES if n_sources is None else int(n_sources), dim, seed)
    if isinstance(sources, (str, os.PathLike)):
        return load_sources(sources, dim)
    return np.asarray(sources, dtype=np.float64)


def _data_name(data: Any, emb: Embeddings) -> str:
    """How the settings name the data: the path as given, else the embeddings' name."""
    return str(data) if isinstance(data, (str, os.PathLike)) else emb.name


def _training_set(emb: Embeddings, subsets: list[Subset], sample: int | None,
                  seed: int) -> tuple[np.ndarray, list[Subset]]:
    """The training array of the flow and the subsets as positions into it (see :func:`stability`)."""
    dtype = np.float64 if emb.dtype == np.float64 else np.float32
    if sample is None or emb.n <= sample:
        check_fits(np.dtype(dtype).itemsize * float(emb.n) * emb.dim, f"the training set of {emb.name}")
        return emb.array(dtype), subsets
    check_fits(np.dtype(dtype).itemsize * float(sample) * emb.dim,
               f"a training sample of {sample} rows of {emb.name}")
    pick = np.sort(role_rng(seed, "stability sample").choice(emb.n, size=sample, replace=False))
    x1 = np.asarray(emb.reader.read_rows(emb.rows[pick]), dtype=dtype)
    out = []
    for s in subsets:
        inside = np.searchsorted(pick, s.rows[np.isin(s.rows, pick)])
        if inside.size == 0:
            raise ParamError("the subset at pr {:g} keeps none of the {} sampled rows of {}; "
                             "raise {sample} (or {sample:0} for every row).", s.pr, sample,
                             emb.name)
        info = {**s.info, "n_kept_data": int(s.rows.size)}
        out.append(Subset(pr=s.pr, rows=inside, info=info))
    return x1, out


def _as_embeddings(data: Any, key: str | None, drop_nonfinite: bool,
                   id_key: str | None = None) -> Embeddings:
    if isinstance(data, Embeddings):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_embeddings(data, key=key, id_key=id_key, drop_nonfinite=drop_nonfinite)
    return Embeddings.from_array(np.asarray(data), drop_nonfinite=drop_nonfinite)


def _selection_subset(sel: Selection | str | os.PathLike, emb: Embeddings) -> Subset:
    if isinstance(sel, Selection):
        return selection_subset(sel, emb, "selection", {"method": sel.method})
    loaded = load_selection(sel)
    return selection_subset(loaded, emb, str(sel), {"selection": str(sel), "method": loaded.method})
