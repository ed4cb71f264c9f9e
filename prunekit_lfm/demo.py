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
   pairs), FD / precision / recall against the held-out digits, the coarse-to-fine sweep
   and the closed-form stability curve on the same embeddings;
7. write ``DIR/report/index.html``, ``report.md``, PNG figures and ``results.json``.

Time convention of the models: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from prunekit.errors import PrunekitError

from .demo_results import (
    C2FRow,
    C2FStage,
    DataStage,
    DemoResults,
    QualityRow,
    RunRow,
    SelectionRow,
    SimilarityRow,
    StabilityStage,
    VaeStage,
)

MARKER = ".prunekit-demo"
SUBDIRS = ("data", "vae", "selections", "runs", "report")

#: criterion name -> how its scores are made and turned into a selection
CRITERIA: dict[str, dict[str, Any]] = {
    "random": {"method": "random", "balance": "none", "invert": False},
    "kmeans-furthest": {"method": "kmeans", "balance": "clusters", "invert": False},
    "kmeans-nearest": {"method": "kmeans", "balance": "clusters", "invert": True},
    "herding": {"method": "herding", "balance": "none", "invert": False},
    "kcenter": {"method": "kcenter", "balance": "none", "invert": False},
    "loss": {"method": "loss", "balance": "none", "invert": False},
}

#: the larger model of the coarse-to-fine pair: a wider, deeper DiT than ``tiny``
FINE_MODEL = {"preset": "tiny", "num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 48}


@dataclass(frozen=True)
class Plan:
    """Every size and step count of one demo setting (``--budget`` scales the step counts)."""

    name: str
    criteria: tuple[str, ...]
    prs: tuple[float, ...]
    vae_steps: int
    lfm_steps: int
    score_steps: int
    fine_steps: int
    n_samples: int
    sample_steps: int
    t_switches: tuple[float, ...]
    score_t_points: int = 8
    score_noise_bank: int = 4
    image_size: int = 8
    vae_batch: int = 32
    batch_size: int = 64
    lr: float = 1e-3
    ema: float = 0.999
    clusters: int = 10
    drop_fraction: float = 0.5
    drop_pr: float = 0.5
    n_sources: int = 256
    flow_steps: int = 50
    auto_tol: float = 0.99
    grid_columns: int = 10
    model: str = "tiny"
    fine_model: dict = field(default_factory=lambda: dict(FINE_MODEL))

    def scaled(self, budget: float) -> Plan:
        def s(v: int) -> int:
            return max(1, int(round(v * budget)))

        return replace(self, vae_steps=s(self.vae_steps), lfm_steps=s(self.lfm_steps),
                       score_steps=s(self.score_steps), fine_steps=s(self.fine_steps))


DEFAULT = Plan(
    name="default", criteria=tuple(CRITERIA), prs=(0.25, 0.5, 0.75), vae_steps=400,
    lfm_steps=600, score_steps=150, fine_steps=600, n_samples=256, sample_steps=30,
    t_switches=(0.0, 0.3, 0.5, 0.7, 0.9, 1.0),
)
QUICK = Plan(
    name="quick", criteria=("random", "kmeans-furthest", "loss"), prs=(0.5,), vae_steps=80,
    lfm_steps=150, score_steps=50, fine_steps=150, n_samples=64, sample_steps=12,
    t_switches=(0.0, 0.5, 0.7, 1.0), score_t_points=4, score_noise_bank=2, n_sources=64,
    flow_steps=20,
)


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
@click.option("--budget", type=float, default=1.0, show_default=True,
              help="Multiply every training step count by this factor (larger = better models).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of every random choice (0 <= seed < 2**63).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads. Numbers are reproducible for a fixed count; 1 is fastest "
                   "on a shared machine.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage messages.")
def demo_command(out: str, quick: bool, budget: float, seed: int, threads: int, quiet: bool) -> None:
    """Run the whole pipeline on scikit-learn's digits and write a report.

    Train a VAE, prune with each criterion at several pr, train a latent flow-matching
    model per subset, and measure same-seed stability, quality (FD, precision, recall) and
    coarse-to-fine cost. Opens with DIR/report/index.html (also report.md, results.json).
    """
    from .requirements import require_plugin

    require_plugin("demo")
    if not (math.isfinite(budget) and budget > 0):
        raise PrunekitError(f"--budget must be a positive, finite factor, got {budget}.")
    if budget > 1000:
        raise PrunekitError(f"--budget {budget:g} would train for weeks; use a factor up to 1000.")
    if threads < 1:
        raise PrunekitError(f"--threads must be at least 1, got {threads}.")
    try:
        import matplotlib  # noqa: F401  (checked first: the report comes after minutes of work)
    except ImportError as exc:
        raise PrunekitError('the demo draws its figures with matplotlib: pip install "prunekit[plot]".') from exc
    plan = (QUICK if quick else DEFAULT).scaled(budget)
    results = run_demo(Path(out), plan, seed=seed, threads=threads, budget=budget, quiet=quiet)
    if not quiet:
        click.echo(f"[demo] done in {results.timings['total']:.0f} s", err=True)
    click.echo(f"report: {Path(out) / 'report' / 'index.html'}")


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
    out: Path, plan: Plan, *, seed: int = 0, threads: int = 1, budget: float = 1.0, quiet: bool = False
) -> DemoResults:
    """Run every stage into ``out`` and return the results (also written to results.json)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_stages(out, plan, seed=seed, threads=threads, budget=budget, quiet=quiet)
    finally:
        torch.set_num_threads(before)


def _run_stages(out: Path, plan: Plan, *, seed: int, threads: int, budget: float, quiet: bool) -> DemoResults:
    prepare_dir(out)
    progress = not quiet
    stages = Stages(quiet)
    t_total = time.perf_counter()
    ctx = _Context(out, plan, seed, progress, stages)
    ctx.results["settings"] = {**asdict(plan), "seed": seed, "threads": threads, "budget": budget,
                               "criteria_definitions": {c: CRITERIA[c] for c in plan.criteria}}
    ctx.data()
    ctx.vae_and_latents()
    ctx.scores_and_selections()
    ctx.train_models()
    ctx.evaluate()
    ctx.stability()
    from .report import write_report

    if not quiet:
        click.echo("[demo] writing the report", err=True)
    ctx.results["inspect_page"] = ctx.inspect_page()
    ctx.results["timings"] = {**stages.timings, "total": round(time.perf_counter() - t_total, 3),
                              "c2f_wall": ctx.c2f_wall}
    results = DemoResults(**ctx.results)
    write_report(out / "report", results, ctx.images_for_grid())
    return results


class _Context:
    """State shared by the stages: paths, arrays in memory, and each stage's typed result."""

    def __init__(self, out: Path, plan: Plan, seed: int, progress: bool, stages: Stages) -> None:
        self.out, self.plan, self.seed, self.progress, self.stages = out, plan, seed, progress, stages
        self.results: dict[str, Any] = {}
        self.samples: dict[str, Any] = {}  # model name -> DecodedSamples
        self.selections: dict[str, Any] = {}  # model name -> Selection
        self.model_info: dict[str, dict[str, Any]] = {}
        from .sampling import SamplingConfig

        self.sampling = SamplingConfig(steps=plan.sample_steps, seed=seed, device="cpu")

    # ----------------------------------------------------------------------- data

    def data(self) -> None:
        from .features import (
            CLASSIFIER_DESCRIPTION,
            digits_split,
            save_digits_classifier,
            train_digits_classifier,
        )
        from .latents import load_images

        p = self.plan
        self.stages.start("data", "splitting the digits and training the feature classifier")
        images, ids, labels = load_images("digits", p.image_size)
        train, test = digits_split(self.seed)
        self.train_rows, self.test_rows = train, test
        self.train_images, self.train_ids, self.train_labels = images[train], ids[train], labels[train]
        self.test_images = images[test]
        clf = train_digits_classifier(self.seed, progress=self.progress)
        save_digits_classifier(clf, self.out / "data" / "digits_classifier.pt")
        self.classifier = clf
        self.results["data"] = DataStage(
            dataset="scikit-learn digits (1797 images of 8x8" + (
                f", upsampled bilinearly to {p.image_size}x{p.image_size})" if p.image_size != 8 else ")"),
            image_size=p.image_size,
            n_train=int(train.size),
            n_test=int(test.size),
            split=f"stratified by digit, 20 % held out, seed {self.seed}",
            features=CLASSIFIER_DESCRIPTION,
            classifier_test_accuracy=clf.test_accuracy,
        )

    def vae_and_latents(self) -> None:
        from .latents import LatentStore, decode, encode, save_latents
        from .vae import save_vae, train_vae

        p = self.plan
        self.stages.start("vae", f"training the VAE ({p.vae_steps} steps) and encoding")
        vae = train_vae(self.train_images, "small", steps=p.vae_steps, batch_size=p.vae_batch,
                        seed=self.seed, progress=self.progress)
        self.vae_dir = save_vae(vae, self.out / "vae")
        self.vae = vae
        z = encode(self.train_images, vae, progress=self.progress)
        store = LatentStore(latents=z, ids=self.train_ids, labels=self.train_labels,
                            scale_factor=float(vae.config.scaling_factor),
                            shift_factor=float(getattr(vae.config, "shift_factor", None) or 0.0),
                            vae=str(self.vae_dir.resolve()), image_size=p.image_size,
                            source=f"digits (training split, seed {self.seed})")
        self.latents_path = save_latents(self.out / "data" / "latents.h5", store)
        self.latents = z
        recon = decode(z[:256], vae)
        from .evaluate import to_unit

        self.results["vae"] = VaeStage(
            size="small",
            steps=p.vae_steps,
            latent_shape=list(z.shape[1:]),
            scaling_factor=store.scale_factor,
            reconstruction_mse_01=float(np.mean((to_unit(recon) - to_unit(self.train_images[:256])) ** 2)),
        )
        self.results["data"].embeddings = (
            f"VAE latents flattened ({'x'.join(map(str, z.shape[1:]))} = {int(np.prod(z.shape[1:]))}-d), "
            "as given (no normalisation; k-means normalises rows itself)"
        )

    # ----------------------------------------------------------------------- pruning

    def scores_and_selections(self) -> None:
        import prunekit as pk

        p = self.plan
        self.stages.start("scores", f"scoring ({', '.join(p.criteria)}) and selecting at pr {list(p.prs)}")
        flat = self.latents.reshape(self.latents.shape[0], -1).astype(np.float64)
        self.embeddings = pk.Embeddings.from_array(flat, ids=self.train_ids, labels=self.train_labels,
                                                   name="VAE latents (flattened)")
        methods = {CRITERIA[c]["method"] for c in p.criteria} | {"kmeans"}  # k-means: drop-clusters too
        scores = {}
        for method in sorted(methods):
            if method == "loss":
                scores[method] = self._loss_scores()
                continue
            params = {"k": p.clusters} if method == "kmeans" else {}
            scores[method] = pk.score(self.embeddings, method, seed=self.seed, progress=self.progress, **params)
            scores[method].save(self.out / "selections" / f"scores_{method}.h5")
        self.scores = scores
        table = {}
        for crit in p.criteria:
            c = CRITERIA[crit]
            for pr in p.prs:
                sel = pk.select(scores[c["method"]], pr, balance=c["balance"], invert=c["invert"], seed=self.seed)
                name = model_name(crit, pr)
                self._keep_selection(name, sel, {"criterion": crit, "pr": pr})
                table[name] = self._selection_row(sel, crit, pr)
        drop = pk.select(scores["kmeans"], p.drop_pr, balance="clusters", drop_clusters=p.drop_fraction,
                         seed=self.seed)
        name = f"drop-clusters@{p.drop_pr:g}"
        self._keep_selection(name, drop, {"criterion": "drop-clusters", "pr": p.drop_pr})
        table[name] = self._selection_row(drop, "drop-clusters", p.drop_pr)
        table[name].dropped_clusters = drop.params.get("dropped")
        self.results["selections"] = table

    def _loss_scores(self):
        from .scoring import score_items
        from .train import train

        p = self.plan
        run = self.out / "runs" / "loss-scorer"
        train(str(self.latents_path), str(run), model=p.model, steps=p.score_steps, batch_size=p.batch_size,
              lr=p.lr, ema=p.ema, seed=self.seed, checkpoint_every=p.score_steps, progress=self.progress)
        sc = score_items(run, self.latents_path, criterion="loss", t_points=p.score_t_points,
                         noise_bank=p.score_noise_bank, seed=self.seed, progress=self.progress)
        sc.save(self.out / "selections" / "scores_loss.h5")
        return sc

    def _keep_selection(self, name: str, sel, info: dict) -> None:
        path = self.out / "selections" / f"{safe(name)}.h5"
        sel.save(path)
        self.selections[name] = sel
        self.model_info[name] = {**info, "selection": str(path), "n_kept": sel.n_kept}

    def _selection_row(self, sel, crit: str, pr: float) -> SelectionRow:
        cluster = self.scores["kmeans"].cluster
        kept = np.bincount(cluster[sel.indices], minlength=self.plan.clusters)
        digits = np.bincount(self.train_labels[sel.indices], minlength=10)
        return SelectionRow(criterion=crit, pr=pr, n_kept=sel.n_kept,
                            clusters_present=int((kept > 0).sum()), kept_per_cluster=kept.tolist(),
                            digits_present=int((digits > 0).sum()), kept_per_digit=digits.tolist())

    # ----------------------------------------------------------------------- training

    def train_models(self) -> None:
        from .runs import read_log
        from .train import train

        p = self.plan
        jobs = [("full", None, p.model, p.lfm_steps)]
        jobs += [(name, self.model_info[name]["selection"], p.model, p.lfm_steps) for name in self.selections]
        jobs += [("fine (larger model)", None, p.fine_model, p.fine_steps)]
        self.stages.start("train", f"training {len(jobs)} flow-matching models ({p.lfm_steps} steps each)")
        self.model_info["full"] = {"criterion": "full", "pr": 0.0, "n_kept": int(self.latents.shape[0])}
        self.model_info["fine (larger model)"] = {"criterion": "fine", "pr": 0.0, "n_kept": int(self.latents.shape[0])}
        runs = {}
        for name, selection, model, steps in jobs:
            if self.progress:
                click.echo(f"[demo]   {name}", err=True)
            run = self.out / "runs" / safe(name)
            config = train(str(self.latents_path), str(run), model=model, selection=selection, steps=steps,
                           batch_size=p.batch_size, lr=p.lr, ema=p.ema, seed=self.seed,
                           checkpoint_every=steps, progress=self.progress)
            log = read_log(run)
            tail = [r["loss"] for r in log[-max(1, len(log) // 10):]]
            runs[name] = RunRow(
                run_dir=str(run.relative_to(self.out)), steps=steps, n_train=config.n_train,
                final_loss_mean_last_10pct=float(np.mean(tail)) if tail else None,
                model=model if isinstance(model, str) else "fine: " + json.dumps(model, sort_keys=True))
            self.model_info[name]["run_dir"] = str(run)
        self.results["runs"] = runs

    # ----------------------------------------------------------------------- evaluation

    def evaluate(self) -> None:
        from .evaluate import paired_similarity, quality, to_unit
        from .features import get_extractor
        from .generate import draw

        p = self.plan
        self.stages.start("evaluate", f"sampling every model ({p.n_samples} seeds) and measuring")
        extractor = get_extractor(f"digits-classifier:{self.out / 'data' / 'digits_classifier.pt'}")
        real = to_unit(self.test_images)
        real_feats = extractor(real)
        config = self.sampling
        for name, info in self.model_info.items():
            self.samples[name] = draw(info["run_dir"], p.n_samples, config, vae=str(self.vae_dir), name=name)[0]
        full = self.samples["full"]
        similarity, qualities = {}, {}
        for name, s in self.samples.items():
            info = self.model_info[name]
            if name != "full":
                sim = paired_similarity(full, s, extractor)
                similarity[name] = SimilarityRow(criterion=info["criterion"], pr=info["pr"],
                                                 n_kept=info["n_kept"], **sim)
            qualities[name] = QualityRow(criterion=info["criterion"], pr=info["pr"], n_kept=info["n_kept"],
                                         **quality(s.images, real, extractor, real_features=real_feats))
        # how much FD moves with the sampling seed alone: the full model, next seed
        other, _ = draw(self.model_info["full"]["run_dir"], p.n_samples, config.replace(seed=self.seed + 1),
                        vae=str(self.vae_dir), name="full")
        qualities["full, next sampling seed"] = QualityRow(
            criterion="full", pr=0.0, n_kept=self.model_info["full"]["n_kept"],
            **quality(other.images, real, extractor, real_features=real_feats))
        # the floor: real training images against the held-out ones, same count
        pick = np.random.default_rng(self.seed).choice(len(self.train_images), p.n_samples, replace=False)
        qualities["real training images"] = QualityRow(
            criterion="real", pr=0.0, n_kept=p.n_samples,
            **quality(to_unit(self.train_images[np.sort(pick)]), real, extractor, real_features=real_feats))
        self.results["similarity"] = similarity
        self.results["quality"] = qualities
        self.results["c2f"] = self._c2f(extractor, real, real_feats)

    def _c2f(self, extractor, real, real_feats) -> C2FStage:
        from .c2f import sweep
        from .evaluate import quality, to_unit
        from .generate import DecodedSamples, load_models
        from .latents import decode

        p = self.plan
        self.stages.start("c2f", f"coarse-to-fine sweep over t_switch {list(p.t_switches)}")
        models, _ = load_models(self.model_info["fine (larger model)"]["run_dir"],
                                self.model_info["full"]["run_dir"], config=self.sampling)
        result = sweep(models["coarse"], models["fine"], p.t_switches, p.n_samples, self.sampling,
                       tol=p.auto_tol, progress=False, keep_samples=True)
        table, walls = [], {}
        for row in result.rows:
            s, res = row.t_switch, result.samples[row.t_switch]
            images = to_unit(decode(res.latents.numpy(), self.vae))
            q = quality(images, real, extractor, real_features=real_feats)
            walls[f"{s:g}"] = {"wall_s": row.wall_s, "wall_ratio": row.wall_ratio}
            table.append(C2FRow(t_switch=s, coarse_steps=row.coarse_steps, fine_steps=row.fine_steps,
                                flops=int(row.flops), flops_ratio=row.flops_ratio,
                                latent_cos_to_fine_mean=row.cos_mean, latent_cos_to_fine_median=row.cos_median,
                                latent_mse_to_fine_mean=row.mse_mean, fd=q["fd"], precision=q["precision"],
                                recall=q["recall"], f_score=q["f_score"]))
            if s in (0.0, 0.5, 0.7, 1.0) or s == p.t_switches[-1]:
                self.samples[f"c2f t_switch={s:g}"] = DecodedSamples(
                    f"c2f t_switch={s:g}", res.latents.numpy(), images, res.indices, res.labels, self.seed)
        self.c2f_wall = walls  # timings, kept apart from the reproducible numbers
        return C2FStage(
            coarse="full (tiny)", fine="fine (larger model) on the full set",
            flops_per_call_ratio=result.flops_per_call_ratio,
            rows=table, auto_tol=p.auto_tol, auto_t_switch=result.auto,
            auto_rule=f"cheapest t_switch whose mean latent cosine similarity to fine-only is >= {p.auto_tol}",
        )

    def stability(self) -> None:
        from prunekit.flow.study import draw_sources, selection_subset, stability_rows

        p = self.plan
        self.stages.start("stability", "closed-form stability curve on the same embeddings")
        x1 = self.embeddings.array(np.float64)
        subsets = []
        for name, sel in self.selections.items():
            info = self.model_info[name]
            subsets.append(selection_subset(sel, self.embeddings, name,
                                            {"model": name, "criterion": info["criterion"]}))
        x0 = draw_sources(p.n_sources, x1.shape[1], self.seed)
        rows = stability_rows(x1, subsets, x0, steps=p.flow_steps, dtype="float64", progress=self.progress)
        self.results["stability"] = StabilityStage(
            what="closed-form (empirical optimal) flow on the flattened VAE latents; "
                 "unchanged fraction = share of noise points whose nearest training point at t = 1 "
                 "is the same with the subset as with the full set, among those whose full-set "
                 "assignment was kept",
            n_sources=p.n_sources, steps=p.flow_steps, rows=rows,
        )
        self.stages.stop()

    def inspect_page(self) -> str:
        """``prunekit inspect --html`` for one selection, on the digits themselves.

        Written to ``report/inspect/index.html`` (the report links it); the other criteria at
        the same pr are compared by their MMD. Returns the page's path relative to the report.
        """
        from prunekit.report import build
        from prunekit.report.thumbs import MemoryImages

        pr = self.plan.prs[0]
        crit = "kmeans-furthest" if "kmeans-furthest" in self.plan.criteria else self.plan.criteria[0]
        name = model_name(crit, pr)
        images = MemoryImages(dict(zip(self.train_ids.tolist(), (np.asarray(self.train_images) + 1) / 2,
                                       strict=True)), name="the training digits")
        others = [(n, s) for n, s in self.selections.items()
                  if n != name and self.model_info[n]["pr"] == pr]
        report = build(self.selections[name], scores=self.scores[CRITERIA[crit]["method"]],
                       embeddings=self.embeddings, images=images, compare=others, name=name,
                       seed=self.seed, clusters_shown=4)
        report.render_html(self.out / "report" / "inspect")
        return "inspect/index.html"

    def images_for_grid(self) -> dict[str, np.ndarray]:
        """Rows of the sample grid: model name -> images of the first seeds (same columns)."""
        k = self.plan.grid_columns
        return {name: s.images[:k] for name, s in self.samples.items()}


def model_name(criterion: str, pr: float) -> str:
    return f"{criterion}@{pr:g}"


def safe(name: str) -> str:
    """A folder/file name for a model name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
