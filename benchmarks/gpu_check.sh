#!/usr/bin/env bash
# GPU check of the latent flow-matching plug-in, in under 10 minutes on one GPU:
#   1. benchmarks/bench_lfm.py on CUDA (training steps/s, sampling images/s, coarse-to-fine
#      cost of DiT-S/2 -> DiT-XL/2 on 32x32x4 latents, 60 Euler steps);
#   2. a short real pipeline on scikit-learn's bundled digits with `prunekit lfm`:
#      train-vae -> encode -> train coarse and fine -> sample (+ PNG) -> c2f-sweep ->
#      loss scores -> select -> train on the selection;
#   3. a table of what each phase took and produced.
#
# Usage:  bash benchmarks/gpu_check.sh [WORK_DIR]     (default: a fresh temporary folder)
# Needs torch with CUDA, diffusers and this project installed in $PYTHON (default: the
# repository's .venv if present, else python3). Nothing is downloaded.
# SMOKE=1 runs the same commands on the CPU with tiny models and few steps (a dry run of
# the script itself, ~2 minutes; no benchmark).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY="$here/.venv/bin/python"
else PY=python3; fi
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/prunekit-gpu.XXXXXX")}"
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
LIMIT="${LIMIT:-570}"  # seconds for the whole script; each phase gets what is left
[[ "${SMOKE:-0}" == 1 ]] && LIMIT="${LIMIT_SMOKE:-1200}"  # the shared CPU is slow

SMOKE="${SMOKE:-0}"
"$PY" - "$SMOKE" <<'EOF'
import sys
import torch
if sys.argv[1] == "1":
    print("gpu_check: SMOKE=1, a CPU dry run with tiny models (torch %s)" % torch.__version__)
elif not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s)." % torch.__version__)
else:
    print("gpu_check: torch %s, %s" % (torch.__version__, torch.cuda.get_device_name(0)))
EOF

# The `prunekit lfm` commands come through the package's entry points: install it if needed
# (editable, no dependencies, no network).
if ! "$PY" -c 'from importlib.metadata import entry_points as e; import sys; sys.exit(0 if any(p.name == "lfm" for p in e(group="prunekit.plugins")) else 1)'; then
  echo "gpu_check: installing the project (pip install -e . --no-deps)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
fi
# An executable (not a shell function) so that `timeout` can run it.
pk="$WORK/prunekit"
printf '#!/bin/sh\nexec "%s" -c "import sys; from prunekit.cli import main; sys.argv[0] = \\"prunekit\\"; sys.exit(main())" "$@"\n' \
  "$(command -v "$PY" || echo "$PY")" > "$pk"
chmod +x "$pk"

start_all=$(date +%s)
declare -a TABLE=()
phase() {  # phase NAME COMMAND...: run with a time limit, record seconds and status
  local name="$1"; shift
  local left=$(( LIMIT - ($(date +%s) - start_all) ))
  if (( left < 10 )); then TABLE+=("$(printf '%-28s %8s  %s' "$name" "-" "skipped (time limit)")"); return 0; fi
  local t0 rc=0 ms
  t0=$(date +%s%N)
  echo; echo "== $name"
  timeout "$left" "$@" || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  TABLE+=("$(printf '%-28s %6d.%01d  %s' "$name" $((ms / 1000)) $(((ms % 1000) / 100)) \
            "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")")")
  return 0
}

D="$WORK"
if [[ "$SMOKE" == 1 ]]; then  # tiny everything, on the CPU
  DEV=cpu; VAE_STEPS=20; STEPS=20; COARSE=tiny; FINE=small; SAMPLING_STEPS=4; N=16; IMG=16
  SCORE=(--t-points 2 --noise-bank 1)
else
  DEV=cuda; VAE_STEPS=1500; STEPS=2000; COARSE=DiT-S/2; FINE=DiT-B/2; SAMPLING_STEPS=60; N=256; IMG=32
  SCORE=(--t-points 8 --noise-bank 4)
  phase "bench_lfm (CUDA)" "$PY" benchmarks/bench_lfm.py --device cuda --latent-size 32 --batch 16 \
    --train-steps 20 --steps 60 --repeats 3 --fine DiT-XL/2
fi
S=(--steps "$SAMPLING_STEPS" --device "$DEV" -q)
phase "train-vae digits" "$pk" lfm train-vae digits -o "$D/vae" --image-size "$IMG" --steps "$VAE_STEPS" \
  --batch-size 128 --device "$DEV" -q
phase "encode digits" "$pk" lfm encode digits --vae "$D/vae" -o "$D/latents.h5" --device "$DEV" -q
phase "train coarse ($COARSE)" "$pk" lfm train "$D/latents.h5" --model "$COARSE" -o "$D/coarse" \
  --steps "$STEPS" --batch-size 128 --lr 3e-4 --ema 0.999 --conditional --device "$DEV" -q
phase "train fine ($FINE)" "$pk" lfm train "$D/latents.h5" --model "$FINE" -o "$D/fine" \
  --steps "$STEPS" --batch-size 128 --lr 3e-4 --ema 0.999 --conditional --device "$DEV" -q
phase "sample fine (64, cfg 2)" "$pk" lfm sample "$D/fine" --n 64 --cfg 2 -o "$D/samples.h5" \
  --png "$D/grid.png" "${S[@]}"
phase "sample c2f @ 0.7" "$pk" lfm sample --coarse "$D/coarse" --fine "$D/fine" --t-switch 0.7 --n 64 \
  --cfg 2 -o "$D/samples_c2f.h5" --png "$D/grid_c2f.png" "${S[@]}"
phase "c2f-sweep ($N samples)" "$pk" lfm c2f-sweep --coarse "$D/coarse" --fine "$D/fine" \
  --t-switch 0 0.3 0.5 0.7 0.9 1 --n "$N" --batch-size "$N" --auto 0.95 --repeats 3 -o "$D/sweep.json" "${S[@]}"
phase "score loss (fine run)" "$pk" lfm score "$D/fine" "$D/latents.h5" --criterion loss "${SCORE[@]}" \
  -o "$D/scores.h5" --device "$DEV" -q
phase "select --pr 0.5" "$pk" select "$D/scores.h5" --pr 0.5 -o "$D/selection.h5"
phase "train on selection ($COARSE)" "$pk" lfm train "$D/latents.h5" --selection "$D/selection.h5" \
  --model "$COARSE" -o "$D/pruned" --steps $((STEPS / 4)) --batch-size 128 --conditional --device "$DEV" -q

echo
echo "== results in $D"
"$PY" - "$D" <<'EOF' || true
import json, sys
from pathlib import Path
import h5py
d = Path(sys.argv[1])
for name in ("samples.h5", "samples_c2f.h5"):
    p = d / name
    if p.exists():
        with h5py.File(p) as f:
            print(f"{name:16s} {f['latents'].shape[0]} samples, {f.attrs['flops'] / 1e9:10.1f} GFLOPs, "
                  f"{f.attrs['wall_s']:.2f} s, images: {'images' in f}")
p = d / "sweep.json"
if p.exists():
    s = json.loads(p.read_text())
    print("c2f-sweep  t_switch  FLOPs/fine  wall/fine  cos mean")
    for r in s["rows"]:
        print(f"           {r['t_switch']:8.2f} {r['flops_ratio']:11.3f} {r['wall_ratio']:10.3f} {r['cos_mean']:9.4f}")
    print(f"           auto (cos >= {s['tol']}): t_switch = {s['auto']}")
EOF
echo
echo "phase                         seconds  status"
printf '%s\n' "${TABLE[@]}"
echo "total: $(( $(date +%s) - start_all )) s"
