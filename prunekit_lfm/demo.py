"""``prunekit demo``: the whole pipeline on scikit-learn's bundled digits, with a report.

Steps (all seeded; the same seed gives the same numbers):

1. split the 1797 digits into training and held-out images (stratified), at their 8 x 8 size;
2. train the small VAE on the training images and encode them (4 x 4 x 4 latents);
3. embeddings for pruning = those latents flattened (64-d);
4. score with k-means (balanced clusters, furthest and nearest first), herding, k-center,
   loss (from a briefly trained model) and random; select at each pr;
5. train one latent flow-matching model on the full set and one on each subset (same
   seed, same steps), one on a set with half of the clusters dropped, and a larger model
   on the full set for coarse-to-fine sampling;
6. evaluate: same-seed similarity of each model to the full-set model (against unrelated
   pairs), fidelity (FD, precision, recall) against the held-out digits, the
   coarse-to-fine sweep and the closed-form stability curve on the same embeddings;
7. write ``DIR/report/index.html``, ``report.md``, PNG figures and ``results.json``.

Each step is one function: it returns its typed result (:mod:`.demo_results`) and the
objects later steps work on (the small dataclasses below); no step edits another's result.
Sizes and step counts are a :class:`~.demo_scale.DemoScale`. Time convention of the
models: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from prunekit.errors import PrunekitError

from ._renamed import renamed
from .demo_results import (
    C2FRow,
    C2FStage,
    DataStage,
    DemoResults,
    DemoSettings,
    EvaluationStage,
    FidelityRow,
    PruningStage,
    RunRow,
    SelectionRow,
    SimilarityRow,
    StabilityStage,
    VaeStage,
)
from .demo_scale import CRITERIA, DEFAULT, FINE_MODEL, QUICK, DemoScale

if TYPE_CHECKING:
    from prunekit.io.embeddings import Embeddings
    from prunekit.selection.scores import Scores
    from prunekit.selection.subset import Selection

    from .features import FeatureExtractor
    from .generate import DecodedSamples
    from .sampling import SamplingConfig

__all__ = ["CRITERIA", "DEFAULT", "FINE_MODEL", "QUICK", "DemoScale", "demo_command", "run_demo"]

MARKER = ".prunekit-demo"
SUBDIRS = ("data", "vae", "selections", "runs", "report")
FULL, FINE = "full", "fine (larger model)"


class Stages:
    """Announces each stage on stderr (unless quiet) and records its wall time."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def start(self, name: str, what: str) -> None:
        self.stop()
        self._name, self._t0 = name, time.perf_counter()
        if not self.quiet:
            click.echo(f"[demo] {what}", err=True)

    def stop(self) -> None:
        if self._name is not None:
            self.timings[self._name] = round(time.perf_counter() - self._t0, 3)
            self._name = None


# --------------------------------------------------------------------------- the command


@click.command("demo")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), default="demo-out",
              show_default=True, help="Output folder (a previous demo's output there is replaced).")
@click.option("--quick", is_flag=True, help="A small setting (about 3 minutes on 2 CPU cores).")
@click.option("--effort", type=float, default=1.0, show_default=True,
              help="Multiply every training step count by this factor (larger = better models, "
                   "longer run).")
@click.option("--budget", type=float, default=None, hidden=True,
              help="Old name of --effort; goes in the next release.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of every random choice (0 <= seed < 2**63).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads. Numbers are reproducible for a fixed count; 1 is fastest "
                   "on a shared machine.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage messages.")
def demo_command(out: str, quick: bool, effort: float, budget: float | None, seed: int,
                 threads: int, quiet: bool) -> None:
    """Run the whole pipeline on scikit-learn's digits and write a report.

    Train a VAE, prune with each criterion at several pr, train a latent flow-matching
    model per subset, and measure same-seed stability, fidelity (FD, precision, recall) and
    coarse-to-fine cost. Opens with DIR/report/index.html (also report.md, results.json).
    """
    from .requirements import require_plugin

    require_plugin("demo")
    effort = _effort(effort, budget)
    if threads < 1:
        raise PrunekitError(f"--threads must be at least 1, got {threads}.")
    try:
        import matplotlib  # noqa: F401  (checked first: the report comes after minutes of work)
    except ImportError as exc:
        raise PrunekitError('the demo draws its figures with matplotlib: pip install "prunekit[plot]".') from exc
    scale = (QUICK if quick else DEFAULT).scaled(effort)
    results = run_demo(Path(out), scale, seed=seed, threads=threads, effort=effort, quiet=quiet)
    if not quiet:
        click.echo(f"[demo] done in {results.timings['total']:.0f} s", err=True)
    click.echo(f"report: {Path(out) / 'report' / 'index.html'}")


def _effort(effort: float, budget: float | None) -> float:
    """``--effort``, or its old name ``--budget`` (with a warning), checked."""
    flag = "--effort"
    if budget is not None:
        source = click.get_current_context().get_parameter_source("effort")
        if source is not click.core.ParameterSource.DEFAULT:
            raise PrunekitError("--budget is the old name of --effort; give --effort alone.")
        effort, flag = budget, "--budget"
    if not (math.isfinite(effort) and effort > 0):
        raise PrunekitError(f"{flag} must be a positive, finite factor, got {effort}.")
    if effort > 1000:
        raise PrunekitError(f"{flag} {effort:g} would train for weeks; use a factor up to 1000.")
    if budget is not None:  # after the checks: a refused value gets the one Error: line
        click.echo("Warning: --budget is now --effort; the old name goes in the next release.",
                   err=True)
    return effort


def prepare_dir(out: Path) -> None:
    """Create ``out``; replace a previous demo's output, refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"output {out} is a file; choose a folder.")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise PrunekitError(
                f"output folder {out} is not empty and was not written by `prunekit demo`; "
                "choose a new or empty folder."
            )
        for name in SUBDIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by prunekit demo; rerunning the demo replaces this folder's contents\n")


def run_demo(
    out: Path, scale: DemoScale, *, seed: int = 0, threads: int = 1, effort: float = 1.0,
    quiet: bool = False, budget: float | None = None,
) -> DemoResults:
    """Run every stage into ``out`` and return the results (also written to results.json).

    ``scale`` is already scaled by ``effort``, which is recorded in the settings
    (``budget`` is its old name, for one release).
    """
    import torch

    if budget is not None:
        warnings.warn("run_demo(budget=) is now run_demo(effort=); the old name goes in the next "
                      "release.", DeprecationWarning, stacklevel=2)
        effort = budget
    settings = DemoSettings(scale=scale, seed=seed, threads=threads, effort=effort,
                            criteria_definitions={c: CRITERIA[c] for c in scale.criteria})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_stages(out, settings, quiet)
    finally:
        torch.set_num_threads(before)


def _run_stages(out: Path, settings: DemoSettings, quiet: bool) -> DemoResults:
    from .report import write_report
    from .sampling import SamplingConfig

    prepare_dir(out)
    t_total = time.perf_counter()
    scale, stages = settings.scale, Stages(quiet)
    run = DemoRun(out, scale, settings.seed, not quiet, stages,
                  SamplingConfig(steps=scale.sample_steps, seed=settings.seed, device="cpu"))
    digits, data = split_digits(run)
    latents, vae = train_vae_and_encode(run, digits)
    pruning, pruned = prune(run, digits, latents)
    models, runs = train_models(run, latents, pruning)
    evaluated = evaluate(run, digits, latents, models)
    sweep = coarse_to_fine(run, latents, models, evaluated.reference)
    stability = closed_form_stability(run, pruning)
    if not quiet:
        click.echo("[demo] writing the report", err=True)
    page = inspect_page(run, digits, pruning)
    timings = {**stages.timings, "total": round(time.perf_counter() - t_total, 3),
               "c2f_wall": sweep.walls}
    results = DemoResults(settings=settings, data=data, vae=vae, pruning=pruned, runs=runs,
                          evaluation=evaluated.result, c2f=sweep.result, stability=stability,
                          timings=timings, inspect_page=page)
    shown = {**evaluated.samples, **sweep.samples}
    write_report(out / "report", results,
                 {name: s.images[: scale.grid_columns] for name, s in shown.items()})
    return results


# --------------------------------------------------------------------------- what stages share


@dataclass(frozen=True)
class DemoRun:
    """What every stage reads: the output folder, the scale, the seed, the stage timer."""

    out: Path
    scale: DemoScale
    seed: int
    progress: bool
    stages: Stages
    sampling: SamplingConfig  # every model is sampled with these settings


@dataclass
class Digits:
    """The split digits in [-1, 1] and the feature classifier trained on them."""

    train_images: np.ndarray
    train_ids: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    classifier: Path


@dataclass
class Latents:
    """The trained VAE and the training digits encoded with it (also saved as a latent store)."""

    vae: Any  # diffusers AutoencoderKL
    vae_dir: Path
    path: Path
    z: np.ndarray


@dataclass
class Pruned:
    """One selection of the demo: how it was made and where it was saved."""

    selection: Selection
    criterion: str
    pr: float
    path: Path


@dataclass
class Pruning:
    """The embeddings for pruning, every method's scores and the selections by model name."""

    embeddings: Embeddings
    scores: dict[str, Scores]
    subsets: dict[str, Pruned]


@dataclass
class Model:
    """One trained flow-matching model and the data it was trained on."""

    criterion: str
    pr: float
    n_kept: int
    run_dir: Path


@dataclass
class Reference:
    """The held-out digits in the classifier's feature space: fidelity is measured against them."""

    extractor: FeatureExtractor
    images: np.ndarray  # in [0, 1]
    features: np.ndarray

    def measure(self, images: np.ndarray) -> dict[str, Any]:
        """FD, precision and recall of ``images`` (in [0, 1]) against the held-out digits."""
        from .evaluate import fidelity

        return fidelity(images, self.images, self.extractor, real_features=self.features)

    def row(self, criterion: str, pr: float, n_kept: int, images: np.ndarray) -> FidelityRow:
        """:meth:`measure` as the row of a model trained on ``n_kept`` items."""
        return FidelityRow(criterion=criterion, pr=pr, n_kept=n_kept, **self.measure(images))


@dataclass
class Evaluated:
    """The evaluation stage: its result, every model's samples and the reference set."""

    result: EvaluationStage
    samples: dict[str, DecodedSamples]
    reference: Reference


@dataclass
class Sweep:
    """The coarse-to-fine stage: its result, wall-clock timings kept apart, grid rows."""

    result: C2FStage
    walls: dict[str, dict[str, float]]
    samples: dict[str, DecodedSamples]


# --------------------------------------------------------------------------- data


def split_digits(run: DemoRun) -> tuple[Digits, DataStage]:
    """Split the digits (stratified) and train the feature classifier on the training part."""
    from .features import (
        CLASSIFIER_DESCRIPTION,
        digits_split,
        save_digits_classifier,
        train_digits_classifier,
    )
    from .latents import load_images

    size = run.scale.image_size
    run.stages.start("data", "splitting the digits and training the feature classifier")
    images, ids, labels = load_images("digits", size)
    train, test = digits_split(run.seed)
    clf = train_digits_classifier(run.seed, progress=run.progress)
    path = run.out / "data" / "digits_classifier.pt"
    save_digits_classifier(clf, path)
    digits = Digits(images[train], ids[train], labels[train], images[test], path)
    upsampled = f", upsampled bilinearly to {size}x{size})" if size != 8 else ")"
    return digits, DataStage(
        dataset="scikit-learn digits (1797 images of 8x8" + upsampled,
        image_size=size,
        n_train=int(train.size),
        n_test=int(test.size),
        split=f"stratified by digit, 20 % held out, seed {run.seed}",
        features=CLASSIFIER_DESCRIPTION,
        classifier_test_accuracy=clf.test_accuracy,
    )


def train_vae_and_encode(run: DemoRun, digits: Digits) -> tuple[Latents, VaeStage]:
    """Train the small VAE on the training digits, encode them and save the latent store."""
    from .evaluate import to_unit
    from .latents import LatentStore, decode, encode, save_latents
    from .vae import save_vae, train_vae

    s = run.scale
    run.stages.start("vae", f"training the VAE ({s.vae_steps} steps) and encoding")
    vae = train_vae(digits.train_images, "small", steps=s.vae_steps, batch_size=s.vae_batch,
                    seed=run.seed, progress=run.progress)
    vae_dir = save_vae(vae, run.out / "vae")
    z = encode(digits.train_images, vae, progress=run.progress)
    store = LatentStore(latents=z, ids=digits.train_ids, labels=digits.train_labels,
                        scale_factor=float(vae.config.scaling_factor),
                        shift_factor=float(getattr(vae.config, "shift_factor", None) or 0.0),
                        vae=str(vae_dir.resolve()), image_size=s.image_size,
                        source=f"digits (training split, seed {run.seed})")
    path = save_latents(run.out / "data" / "latents.h5", store)
    recon = decode(z[:256], vae)
    mse = float(np.mean((to_unit(recon) - to_unit(digits.train_images[:256])) ** 2))
    return Latents(vae, vae_dir, path, z), VaeStage(
        size="small", steps=s.vae_steps, latent_shape=list(z.shape[1:]),
        scaling_factor=store.scale_factor, reconstruction_mse_01=mse,
    )


# --------------------------------------------------------------------------- pruning


def prune(run: DemoRun, digits: Digits, latents: Latents) -> tuple[Pruning, PruningStage]:
    """Score the flattened latents with every criterion's method and select at each pr."""
    import prunekit as pk

    s, z = run.scale, latents.z
    run.stages.start("scores", f"scoring ({', '.join(s.criteria)}) and selecting at pr {list(s.prs)}")
    flat = z.reshape(z.shape[0], -1).astype(np.float64)
    emb = pk.Embeddings.from_array(flat, ids=digits.train_ids, labels=digits.train_labels,
                                   name="VAE latents (flattened)")
    scores = _score_all(run, emb, latents)
    subsets = _select_all(run, scores)
    rows = {name: _selection_row(p, scores["kmeans"].cluster, digits.train_labels, s.clusters)
            for name, p in subsets.items()}
    shape = z.shape[1:]
    described = (f"VAE latents flattened ({'x'.join(map(str, shape))} = {int(np.prod(shape))}-d), "
                 "as given (no normalisation; k-means normalises rows itself)")
    return Pruning(emb, scores, subsets), PruningStage(embeddings=described, selections=rows)


def _score_all(run: DemoRun, emb: Embeddings, latents: Latents) -> dict[str, Scores]:
    """Scores of each method the criteria use, and k-means (for drop-clusters), saved."""
    import prunekit as pk

    methods = {CRITERIA[c]["method"] for c in run.scale.criteria} | {"kmeans"}
    scores = {}
    for method in sorted(methods):
        if method == "loss":
            scores[method] = _loss_scores(run, emb, latents)
            continue
        params = {"k": run.scale.clusters} if method == "kmeans" else {}
        scores[method] = pk.score(emb, method, seed=run.seed, progress=run.progress, **params)
        scores[method].save(run.out / "selections" / f"scores_{method}.h5")
    return scores


def _loss_scores(run: DemoRun, emb: Embeddings, latents: Latents) -> Scores:
    """Per-item flow-matching loss under a briefly trained model, as scores of ``emb``.

    The loss is computed on the latent store, whose rows ``emb`` holds flattened (same
    items, same order). The store fingerprints its (N, 4, 4, 4) float32 latents and the
    core its (N, 64) float64 rows, so the scores are tied to ``emb`` (the embeddings they
    are selected, inspected and studied on) and keep the store's fingerprint in ``params``.
    """
    from .scoring import score_items
    from .train import train

    s = run.scale
    scorer = run.out / "runs" / "loss-scorer"
    train(str(latents.path), str(scorer), model=s.model, steps=s.score_steps,
          batch_size=s.batch_size, lr=s.lr, ema=s.ema, seed=run.seed,
          checkpoint_every=s.score_steps, progress=run.progress)
    sc = score_items(scorer, latents.path, criterion="loss", t_points=s.score_t_points,
                     noise_bank=s.score_noise_bank, seed=run.seed, progress=run.progress)
    sc = replace(sc, source=emb.name, source_fingerprint=emb.fingerprint,
                 params={**sc.params, "latents_fingerprint": sc.source_fingerprint})
    sc.save(run.out / "selections" / "scores_loss.h5")
    return sc


def _select_all(run: DemoRun, scores: dict[str, Scores]) -> dict[str, Pruned]:
    """One selection per criterion and pr, and one with half of the k-means clusters dropped."""
    import prunekit as pk

    s = run.scale
    subsets = {}
    for crit in s.criteria:
        c = CRITERIA[crit]
        for pr in s.prs:
            sel = pk.select(scores[c["method"]], pr, balance=c["balance"], invert=c["invert"],
                            seed=run.seed)
            subsets[model_name(crit, pr)] = _saved(run, model_name(crit, pr), sel, crit, pr)
    drop = pk.select(scores["kmeans"], s.drop_pr, balance="clusters",
                     drop_clusters=s.drop_fraction, seed=run.seed)
    name = f"drop-clusters@{s.drop_pr:g}"
    subsets[name] = _saved(run, name, drop, "drop-clusters", s.drop_pr)
    return subsets


def _saved(run: DemoRun, name: str, sel: Selection, criterion: str, pr: float) -> Pruned:
    path = run.out / "selections" / f"{safe(name)}.h5"
    sel.save(path)
    return Pruned(sel, criterion, pr, path)


def _selection_row(p: Pruned, cluster: np.ndarray, labels: np.ndarray, k: int) -> SelectionRow:
    """What ``p`` keeps per k-means cluster and per digit."""
    sel = p.selection
    kept = np.bincount(cluster[sel.indices], minlength=k)
    digits = np.bincount(labels[sel.indices], minlength=10)
    dropped = sel.params.get("dropped") if p.criterion == "drop-clusters" else None
    return SelectionRow(criterion=p.criterion, pr=p.pr, n_kept=sel.n_kept,
                        clusters_present=int((kept > 0).sum()), kept_per_cluster=kept.tolist(),
                        digits_present=int((digits > 0).sum()), kept_per_digit=digits.tolist(),
                        dropped_clusters=dropped)


# --------------------------------------------------------------------------- training


def train_models(run: DemoRun, latents: Latents, pruning: Pruning
                 ) -> tuple[dict[str, Model], dict[str, RunRow]]:
    """The full-set model, one per selection (same seed and steps) and the larger model."""
    s = run.scale
    n = int(latents.z.shape[0])
    jobs: dict[str, tuple[Path | None, Any, int]] = {FULL: (None, s.model, s.lfm_steps)}
    jobs.update({name: (p.path, s.model, s.lfm_steps) for name, p in pruning.subsets.items()})
    jobs[FINE] = (None, s.fine_model, s.fine_steps)
    run.stages.start("train", f"training {len(jobs)} flow-matching models ({s.lfm_steps} steps each)")
    rows = {name: _train_one(run, latents, name, *job) for name, job in jobs.items()}
    models = {name: Model(p.criterion, p.pr, p.selection.n_kept, run.out / rows[name].run_dir)
              for name, p in pruning.subsets.items()}
    models[FULL] = Model("full", 0.0, n, run.out / rows[FULL].run_dir)
    models[FINE] = Model("fine", 0.0, n, run.out / rows[FINE].run_dir)
    return models, rows


def _train_one(run: DemoRun, latents: Latents, name: str, selection: Path | None, model: Any,
               steps: int) -> RunRow:
    from .runs import read_log
    from .train import train

    s = run.scale
    if run.progress:
        click.echo(f"[demo]   {name}", err=True)
    run_dir = run.out / "runs" / safe(name)
    config = train(str(latents.path), str(run_dir), model=model,
                   selection=None if selection is None else str(selection), steps=steps,
                   batch_size=s.batch_size, lr=s.lr, ema=s.ema, seed=run.seed,
                   checkpoint_every=steps, progress=run.progress)
    log = read_log(run_dir)
    tail = [r["loss"] for r in log[-max(1, len(log) // 10):]]
    return RunRow(
        run_dir=str(run_dir.relative_to(run.out)), steps=steps, n_train=config.n_train,
        final_loss_mean_last_10pct=float(np.mean(tail)) if tail else None,
        model=model if isinstance(model, str) else "fine: " + json.dumps(model, sort_keys=True))


# --------------------------------------------------------------------------- evaluation


def evaluate(run: DemoRun, digits: Digits, latents: Latents, models: dict[str, Model]) -> Evaluated:
    """Sample every model from the same seeds; similarity to the full model and fidelity."""
    from .evaluate import paired_similarity
    from .features import get_extractor

    run.stages.start("evaluate", f"sampling every model ({run.scale.n_samples} seeds) and measuring")
    extractor = get_extractor(f"digits-classifier:{digits.classifier}")
    real = _unit(digits.test_images)
    ref = Reference(extractor, real, extractor(real))
    samples = {name: _draw(run, latents, m.run_dir, name) for name, m in models.items()}
    similarity, fidelity = {}, {}
    for name, got in samples.items():
        m = models[name]
        if name != FULL:
            sim = paired_similarity(samples[FULL], got, extractor)
            similarity[name] = SimilarityRow(criterion=m.criterion, pr=m.pr, n_kept=m.n_kept, **sim)
        fidelity[name] = ref.row(m.criterion, m.pr, m.n_kept, got.images)
    fidelity.update(_fidelity_baselines(run, digits, latents, models[FULL], ref))
    return Evaluated(EvaluationStage(similarity=similarity, fidelity=fidelity), samples, ref)


def _fidelity_baselines(run: DemoRun, digits: Digits, latents: Latents, full: Model,
                        ref: Reference) -> dict[str, FidelityRow]:
    """How much FD moves with the sampling seed alone, and its floor (real against real)."""
    n = run.scale.n_samples
    other = _draw(run, latents, full.run_dir, FULL, run.sampling.replace(seed=run.seed + 1))
    pick = np.random.default_rng(run.seed).choice(len(digits.train_images), n, replace=False)
    return {
        "full, next sampling seed": ref.row("full", 0.0, full.n_kept, other.images),
        "real training images": ref.row("real", 0.0, n, _unit(digits.train_images[np.sort(pick)])),
    }


def _draw(run: DemoRun, latents: Latents, run_dir: Path, name: str,
          config: SamplingConfig | None = None) -> DecodedSamples:
    from .generate import draw

    return draw(str(run_dir), run.scale.n_samples, config or run.sampling,
                vae=str(latents.vae_dir), name=name)[0]


def _unit(images: np.ndarray) -> np.ndarray:
    from .evaluate import to_unit

    return to_unit(images)


def coarse_to_fine(run: DemoRun, latents: Latents, models: dict[str, Model],
                   ref: Reference) -> Sweep:
    """The tiny full-set model as coarse, the larger one as fine, over the switching times."""
    from .c2f import sweep
    from .generate import DecodedSamples, load_models
    from .latents import decode

    s = run.scale
    run.stages.start("c2f", f"coarse-to-fine sweep over t_switch {list(s.t_switches)}")
    pair, _ = load_models(str(models[FINE].run_dir), str(models[FULL].run_dir), config=run.sampling)
    result = sweep(pair["coarse"], pair["fine"], s.t_switches, s.n_samples, run.sampling,
                   tol=s.auto_tol, progress=False, keep_samples=True)
    rows, walls, shown = [], {}, {}
    for row in result.rows:
        t, res = row.t_switch, result.samples[row.t_switch]
        images = _unit(decode(res.latents.numpy(), latents.vae))
        rows.append(_c2f_row(row, ref.measure(images)))
        walls[f"{t:g}"] = {"wall_s": row.wall_s, "wall_ratio": row.wall_ratio}
        if t in (0.0, 0.5, 0.7, 1.0) or t == s.t_switches[-1]:
            shown[f"c2f t_switch={t:g}"] = DecodedSamples(
                f"c2f t_switch={t:g}", res.latents.numpy(), images, res.indices, res.labels, run.seed)
    return Sweep(C2FStage(
        coarse="full (tiny)", fine="fine (larger model) on the full set",
        flops_per_call_ratio=result.flops_per_call_ratio,
        rows=rows, auto_tol=s.auto_tol, auto_t_switch=result.auto,
        auto_rule=f"cheapest t_switch whose mean latent cosine similarity to fine-only is >= {s.auto_tol}",
    ), walls, shown)


def _c2f_row(row: Any, q: dict[str, Any]) -> C2FRow:
    """One row of the sweep (``prunekit_lfm.c2f``) with the fidelity of its samples."""
    return C2FRow(t_switch=row.t_switch, coarse_steps=row.coarse_steps, fine_steps=row.fine_steps,
                  flops=int(row.flops), flops_ratio=row.flops_ratio,
                  latent_cos_to_fine_mean=row.cos_mean, latent_cos_to_fine_median=row.cos_median,
                  latent_mse_to_fine_mean=row.mse_mean, fd=q["fd"], precision=q["precision"],
                  recall=q["recall"], f_score=q["f_score"])


def closed_form_stability(run: DemoRun, pruning: Pruning) -> StabilityStage:
    """The core's closed-form stability rows for every selection, on the same embeddings."""
    from prunekit.flow.study import draw_sources, selection_subset, stability_rows

    s, emb = run.scale, pruning.embeddings
    run.stages.start("stability", "closed-form stability curve on the same embeddings")
    x1 = emb.array(np.float64)
    subsets = [selection_subset(p.selection, emb, name, {"model": name, "criterion": p.criterion})
               for name, p in pruning.subsets.items()]
    x0 = draw_sources(s.n_sources, x1.shape[1], run.seed)
    rows = stability_rows(x1, subsets, x0, steps=s.flow_steps, dtype="float64", progress=run.progress)
    run.stages.stop()
    return StabilityStage(
        what="closed-form (empirical optimal) flow on the flattened VAE latents; "
             "unchanged fraction = share of noise points whose nearest training point at t = 1 "
             "is the same with the subset as with the full set, among those whose full-set "
             "assignment was kept",
        n_sources=s.n_sources, steps=s.flow_steps, rows=rows,
    )


def inspect_page(run: DemoRun, digits: Digits, pruning: Pruning) -> str:
    """``prunekit inspect --html`` for one selection, on the digits themselves.

    Written to ``report/inspect/index.html`` (the report links it); the other criteria at
    the same pr are compared by their MMD. Returns the page's path relative to the report.
    """
    from prunekit.report import build
    from prunekit.report.thumbs import MemoryImages

    s = run.scale
    pr = s.prs[0]
    crit = "kmeans-furthest" if "kmeans-furthest" in s.criteria else s.criteria[0]
    name = model_name(crit, pr)
    images = MemoryImages(dict(zip(digits.train_ids.tolist(), (np.asarray(digits.train_images) + 1) / 2,
                                   strict=True)), name="the training digits")
    others = [(n, p.selection) for n, p in pruning.subsets.items() if n != name and p.pr == pr]
    report = build(pruning.subsets[name].selection, scores=pruning.scores[CRITERIA[crit]["method"]],
                   embeddings=pruning.embeddings, images=images, compare=others, name=name,
                   seed=run.seed, clusters_shown=4)
    report.render_html(run.out / "report" / "inspect")
    return "inspect/index.html"


def model_name(criterion: str, pr: float) -> str:
    return f"{criterion}@{pr:g}"


def safe(name: str) -> str:
    """A folder/file name for a model name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


__getattr__ = renamed(__name__, "Plan", DemoScale, "DemoScale (prunekit_lfm.demo_scale)")
