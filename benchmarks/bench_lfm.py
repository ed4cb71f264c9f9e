"""Speed of latent flow matching: training steps/s, sampling images/s, coarse-to-fine cost.

1. Training: steps/s of one optimisation step (flow-matching loss on random latents,
   backward, gradient clipping, AdamW) for the ``tiny`` and ``DiT-S/2`` presets.
2. Sampling: images/s of ``prunekit_lfm.sampling.sample`` (Euler) for the same presets.
3. Coarse-to-fine: DiT-S/2 as the coarse model and a model >= 8x larger as the fine one
   (DiT-XL/2 by default, ~21x the FLOPs per call; DiT-L/2 ~14x). For each t_switch the
   cost as a ratio to the fine model alone, measured in the same run: FLOPs (per-call
   FLOPs from FlopCounterMode x calls) and wall time; beside it the ideal ratio
   (1 - s) + s * r from the per-call FLOP ratio r. The measured FLOP ratio equals the
   ideal exactly when s * steps is a whole number of steps (the switch falls on the grid).

Times are medians of --repeats runs after one warm-up. Weights are freshly initialised:
speed does not depend on their values.

    python benchmarks/bench_lfm.py                         # CPU: 8x8x4 latents, few steps
    python benchmarks/bench_lfm.py --fine DiT-L/2 --steps 10
    python benchmarks/bench_lfm.py --device cuda --latent-size 32 --batch 16 --steps 60
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from prunekit_lfm.cost import forward_flops
from prunekit_lfm.fm_path import fm_loss
from prunekit_lfm.models import build_model
from prunekit_lfm.sampling import SamplingConfig, coarse_steps, sample, sample_c2f


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int, device: str) -> float:
    fn()  # warm-up: allocator, kernels, thread pools
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make(spec: str, args: argparse.Namespace) -> torch.nn.Module:
    return build_model(spec, sample_size=args.latent_size, in_channels=4, num_classes=0,
                       device=args.device)


def train_steps_per_s(spec: str, args: argparse.Namespace) -> float:
    model = make(spec, args).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    g = torch.Generator(device=args.device).manual_seed(0)
    shape = (args.batch, 4, args.latent_size, args.latent_size)
    x1 = torch.randn(shape, generator=g, device=args.device)
    amp = args.device.startswith("cuda")

    def steps() -> None:
        for _ in range(args.train_steps):
            x0 = torch.randn(shape, generator=g, device=args.device)
            t = torch.rand(args.batch, generator=g, device=args.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = fm_loss(model, x1, x0, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    return args.train_steps / median_time(steps, args.repeats, args.device)


def sample_images_per_s(spec: str, args: argparse.Namespace) -> tuple[float, int]:
    model = make(spec, args).eval()
    n = args.batch

    def run() -> None:
        sample(model, n, SamplingConfig(seed=0, steps=args.steps, batch_size=n), progress=False)

    per_latent = forward_flops(model, n, (4, args.latent_size, args.latent_size)) // n
    return n / median_time(run, args.repeats, args.device), per_latent


def c2f_rows(args: argparse.Namespace) -> tuple[list[tuple], float, float]:
    coarse, fine = make(args.coarse, args).eval(), make(args.fine, args).eval()
    shape = (4, args.latent_size, args.latent_size)
    n = args.batch
    r = forward_flops(coarse, n, shape) / forward_flops(fine, n, shape)
    config = SamplingConfig(seed=0, steps=args.steps, batch_size=n)
    sample(fine, n, config.replace(steps=1), progress=False)  # warm-up both models
    sample(coarse, n, config.replace(steps=1), progress=False)
    rows = []
    base_flops, base_walls = None, []
    for _ in range(args.repeats):
        res = sample(fine, n, config, progress=False)
        base_flops = res.cost.flops
        base_walls.append(res.cost.wall_s)
    base_wall = statistics.median(base_walls)
    for s in args.t_switch:
        walls, flops = [], 0
        for _ in range(args.repeats):
            res = sample_c2f(coarse, fine, n, config, t_switch=s, progress=False)
            walls.append(res.cost.wall_s)
            flops = res.cost.flops
        wall = statistics.median(walls)
        rows.append((s, coarse_steps(s, args.steps), flops / base_flops, (1 - s) + s * r,
                     wall / base_wall, wall))
    return rows, r, base_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--latent-size", type=int, default=8, help="latent side (32 = 256x256 images)")
    ap.add_argument("--batch", type=int, default=2, help="training batch and samples per run")
    ap.add_argument("--train-steps", type=int, default=3, help="optimisation steps per timed run")
    ap.add_argument("--steps", type=int, default=10, help="Euler steps per sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", nargs="*", default=["tiny", "DiT-S/2"])
    ap.add_argument("--coarse", default="DiT-S/2")
    ap.add_argument("--fine", default="DiT-XL/2")
    ap.add_argument("--t-switch", type=float, nargs="*", default=[0.3, 0.5, 0.7, 0.9, 1.0])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--skip-c2f", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(args.device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {args.device} ({name}); latents 4x{args.latent_size}x{args.latent_size}; "
          f"batch {args.batch}; {args.steps} Euler steps; median of {args.repeats}")

    print("\npreset      train steps/s   sample images/s   GFLOPs per call per latent")
    for spec in args.presets:
        steps_s = train_steps_per_s(spec, args)
        images_s, per_latent = sample_images_per_s(spec, args)
        print(f"{spec:10s} {steps_s:14.2f} {images_s:17.3f} {per_latent / 1e9:20.3f}")

    if args.skip_c2f:
        return
    rows, r, base_wall = c2f_rows(args)
    print(f"\ncoarse-to-fine: {args.coarse} then {args.fine}; one coarse call = {r:.4f} of a fine "
          f"call ({1 / r:.1f}x cheaper)")
    print(f"fine alone: {base_wall:.3f} s wall")
    print("t_switch  coarse steps  FLOPs/fine   ideal  FLOP speed-up  wall/fine  wall speed-up   wall s")
    for s, kc, fr, ideal, wr, wall in rows:
        print(f"{s:8.2f} {kc:8d}/{args.steps:<4d} {fr:10.4f} {ideal:7.4f} {1 / fr:13.2f}x "
              f"{wr:10.4f} {1 / wr:13.2f}x {wall:8.3f}")
    at = [row for row in rows if abs(row[0] - 0.7) < 1e-9]
    if at:
        s, _, fr, ideal, wr, _ = at[0]
        print(f"\nat t_switch 0.7: FLOP ratio {fr:.4f} vs ideal {ideal:.4f} "
              f"(difference {fr - ideal:+.4f}); wall ratio {wr:.4f}")


if __name__ == "__main__":
    main()
