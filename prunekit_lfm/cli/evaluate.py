"""``prunekit lfm compare`` (same-seed similarity of two runs) and ``prunekit lfm metrics`` (fidelity)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from prunekit.cli.common import quiet_option
from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output, write_text

from .options import POSITIVE, device_option, sampling_option, seed_option

FEATURES_HELP = (
    "Feature extractor: pixels, digits-classifier[:PATH] (bundled digits only) or "
    "torchscript:PATH (a local exported Inception/DINOv2/CLIP; nothing is downloaded)."
)
MEASURE_NAMES = {
    "latent_cosine": "latent cosine",
    "latent_mse": "latent MSE",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "feature_cosine": "feature cosine",
}


def _side(letter: str):
    """--coarse-X / --t-switch-X: run side X coarse-to-fine with RUN_X as the fine model."""

    def deco(fn):
        fn = click.option(f"--t-switch-{letter}", type=float, default=None,
                          help=f"Switching time for side {letter.upper()} (t = 0 noise, t = 1 data).")(fn)
        return click.option(f"--coarse-{letter}", type=click.Path(file_okay=False), default=None,
                            help=f"Coarse run for side {letter.upper()}: coarse while t < t_switch, "
                                 f"then RUN_{letter.upper()}.")(fn)

    return deco


@click.command()
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=2), default=256, show_default=True,
              help="Samples per model.")
@seed_option("Noise seed (the same for both).")
@sampling_option("steps", help="ODE steps.")
@sampling_option("solver", help="")
@sampling_option("cfg", help="Guidance scale for conditional runs (sample i gets label i mod "
                             "classes); 1 = none.")
@_side("a")
@_side("b")
@click.option("--features", default="pixels", show_default=True, help=FEATURES_HELP)
@click.option("--vae", type=click.Path(file_okay=False), default=None,
              help="Decode with this VAE folder instead of the one each run was trained with.")
@sampling_option("ema")
@sampling_option("batch_size", help="")
@device_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="compare.json", show_default=True)
@quiet_option
def compare(run_a, run_b, n, seed, steps, solver, cfg, coarse_a, t_switch_a, coarse_b, t_switch_b,
            features, vae, ema, batch_size, device, output, quiet):
    """Same-seed similarity of two trained runs, against unrelated pairs.

    Sample i of RUN_A and sample i of RUN_B start from the same noise. Per pair: cosine
    similarity and MSE of the latents, PSNR and SSIM of the decoded images, cosine
    similarity of image features. The baseline pairs sample i with the next sample of the
    same class (for unconditional runs: sample (i + 1) mod n), so it measures what another
    noise seed gives for the same label.
    """
    from prunekit_lfm.evaluate import paired_similarity
    from prunekit_lfm.features import get_extractor
    from prunekit_lfm.generate import check_sample_memory, draw
    from prunekit_lfm.sampling import SamplingConfig, check_t_switch

    for letter, coarse, ts in (("a", coarse_a, t_switch_a), ("b", coarse_b, t_switch_b)):
        if (coarse is None) != (ts is None):
            raise PrunekitError(f"--coarse-{letter} and --t-switch-{letter} go together; give both or neither.")
        if ts is not None:
            check_t_switch(ts)
    check_output(output, what="--output", inputs=[vae, _features_file(features)],
                 input_dirs=[run_a, run_b, coarse_a, coarse_b, vae])  # before minutes of sampling
    config = SamplingConfig(steps=steps, solver=solver, cfg=cfg, seed=seed, device=device,
                            batch_size=batch_size, ema=ema)
    for run in (run_a, run_b):  # both sides' samples and images are held together
        check_sample_memory(run, n, decode=True, copies=2)
    extractor = get_extractor(features, progress=not quiet)
    common = dict(vae=vae, progress=not quiet)
    a, _ = draw(run_a, n, config, coarse=coarse_a, t_switch=t_switch_a, **common)
    b, _ = draw(run_b, n, config, coarse=coarse_b, t_switch=t_switch_b, **common)
    result = paired_similarity(a, b, extractor)
    result["settings"] = {**config.to_dict(), "features": features,
                          "coarse_a": coarse_a, "t_switch_a": t_switch_a,
                          "coarse_b": coarse_b, "t_switch_b": t_switch_b}
    result["cost"] = {"a": a.cost, "b": b.cost}
    write_text(output, json.dumps(result, indent=2, sort_keys=True) + "\n")
    click.echo(similarity_table(result))
    click.echo(f"wrote {output}")


def similarity_table(result: dict) -> str:
    """Mean / median per measure for same-seed pairs and for the unrelated baseline."""
    lines = [f"{result['a']}  vs  {result['b']}  ({result['n']} pairs, seed {result['seed']})",
             f"{'measure':<16} {'pairs mean':>11} {'median':>9} {'baseline mean':>14} {'median':>9}"]
    for key, m in result["measures"].items():
        p, b = m["pairs"], m["baseline"]
        lines.append(f"{MEASURE_NAMES[key]:<16} {_fmt(p['mean']):>11} {_fmt(p['median']):>9} "
                     f"{_fmt(b['mean']):>14} {_fmt(b['median']):>9}")
    if result.get("features"):
        lines.append(f"features: {result['features']}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


@click.command()
@click.argument("samples", type=click.Path(dir_okay=False))
@click.option("--real", required=True,
              help="Real images: an .npy/HDF5 image array, or digits-test (the held-out digits split).")
@click.option("--features", default="pixels", show_default=True, help=FEATURES_HELP)
@click.option("--k", "k", type=POSITIVE, default=3, show_default=True, help="Neighbours for the k-NN manifolds.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="metrics.json", show_default=True)
@quiet_option
def metrics(samples, real, features, k, output, quiet):
    """Fréchet distance, precision, recall and F-score of SAMPLES against real images.

    SAMPLES is a samples.h5 from `prunekit lfm sample` (its decoded `images`) or an .npy
    image array. Precision = share of generated samples inside the real k-NN manifold,
    recall = share of real samples inside the generated one.
    """
    from prunekit_lfm.evaluate import fidelity, to_unit
    from prunekit_lfm.features import digits_split, get_extractor
    from prunekit_lfm.latents import load_images

    check_output(output, what="--output", inputs=[samples, real, _features_file(features)])
    gen = to_unit(load_images(_checked(samples, "samples"), None, key="images")[0])
    size = gen.shape[-1]
    if real == "digits-test":
        _, test = digits_split(0)
        real_images = to_unit(load_images("digits", size)[0][test])
    else:
        real_images = to_unit(load_images(_checked(real, "--real"), size)[0])
    extractor = get_extractor(features, progress=not quiet)
    result = fidelity(gen, real_images, extractor, k=k)
    result.update({"samples": str(samples), "real": str(real)})
    write_text(output, json.dumps(result, indent=2, sort_keys=True) + "\n")
    click.echo(
        f"FD {result['fd']:.4g}  precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
        f"F {result['f_score']:.3f}  (k = {k}; {result['n_generated']} generated vs {result['n_real']} real)"
    )
    click.echo(f"features: {result['features']}")
    click.echo(f"wrote {output}")


def _features_file(spec: str) -> str | None:
    """The model file a --features spec reads (torchscript:PATH, digits-classifier:PATH)."""
    kind, _, path = spec.partition(":")
    return path if path and kind in ("torchscript", "digits-classifier") else None


def _checked(path: str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(f"{what} file not found: {p}. Give an .npy or HDF5 image array.")
    if p.suffix.lower() != ".npy" and not _is_h5(p):
        raise PrunekitError(f"{what} file {p} is neither .npy nor HDF5; give an image array.")
    return str(p)


def _is_h5(p: Path) -> bool:
    import h5py

    return bool(h5py.is_hdf5(p))

