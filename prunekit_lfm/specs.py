"""The settings of training and sampling, each declared once (importable without torch).

Each tuple of :class:`~prunekit.params.Param` drives the library's validation
(:class:`~prunekit_lfm.runs.TrainConfig` and :func:`prunekit_lfm.train.train`;
:class:`~prunekit_lfm.sampling.SamplingConfig`) and the options of the commands that take
those settings (``prunekit lfm train``; ``sample``, ``c2f-sweep`` and ``compare``), so a
default, a range or a help text is written in one place. The solver choices are the
core's (:data:`prunekit.flow.ode.SOLVER`).
"""

from __future__ import annotations

from dataclasses import replace

from prunekit.flow.ode import SOLVER
from prunekit.params import INT64_MAX, Param, seed_param

from .devices import DEVICE_HELP

#: The time schedules of training (``prunekit_lfm.fm_path.sample_t`` draws them).
T_SCHEDULES = ("uniform", "logit_normal")

#: What a user chooses for a training run, in the order ``lfm train --help`` lists them.
TRAIN_PARAMS = (
    Param("selection", "path", None,
          "Selection file or folder; its rows are matched to the latents by id (by position "
          "without ids).", nullable=True, dir_okay=True),
    Param("model", "str", "tiny",
          "Preset (tiny, small, DiT-S/2, DiT-B/2, DiT-L/2, DiT-XL/2, unet-tiny, unet) or a JSON "
          "config.", objects=(dict,)),
    Param("steps", "int", 1000, "Total optimizer steps.", low=1),
    Param("batch_size", "int", 64, "Global batch (all processes).", low=1),
    Param("lr", "float", 1e-4, "", low=0, open_low=True),
    Param("weight_decay", "float", 0.0, "", low=0),
    Param("ema", "float", 0.9999, "EMA decay (warmed up early on).", low=0, high=1,
          open_high=True),
    Param("grad_clip", "float", 1.0, "Gradient-norm clip; 0 = off.", low=0),
    Param("conditional", "bool", False,
          "Condition on the latents' labels (classifier-free guidance)."),
    Param("cfg_dropout", "float", 0.1,
          "Probability of replacing a label by the null label (conditional runs).", low=0,
          high=1, open_high=True),
    Param("t_schedule", "choice", "uniform", "", choices=T_SCHEDULES),
    seed_param(),
    Param("checkpoint_every", "int", 1000, "", low=1),
)

#: A count that becomes an int64 array, checked by click on the command line.
_COUNT = dict(low=1, high=INT64_MAX, cli_range=True)

#: How many samples ``sample``, ``c2f-sweep`` and the demo draw (not part of SamplingConfig).
N_SAMPLES = Param("n", "int", 64, "Number of samples.", **_COUNT)

#: Every field of :class:`~prunekit_lfm.sampling.SamplingConfig`, in the order of ``--help``.
SAMPLING_PARAMS = (
    seed_param("Noise seed: sample i starts from noise drawn from (seed, i)."),
    Param("steps", "int", 60,
          "ODE steps on the uniform grid t_k = k/steps (t = 0 noise, t = 1 data).", **_COUNT),
    replace(SOLVER, help="Euler (1 call per step) or Heun (2 calls per step)."),
    Param("cfg", "float", 1.0,
          "Guidance scale: v = v_uncond + cfg (v_cond - v_uncond); 1 = no guidance."),
    Param("labels", "int", None,
          "Class labels (conditional runs): one for all samples or one per sample; comma list "
          "or repeated. Default: sample i gets label i mod classes.", nullable=True,
          multiple=True),
    Param("ema", "bool", True, "Use the EMA weights.", negation="no-ema"),
    Param("batch_size", "int", 64, "Samples per batch.", **_COUNT),
    Param("device", "str", "auto", DEVICE_HELP),
)
