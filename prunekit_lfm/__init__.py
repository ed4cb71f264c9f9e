"""prunekit_lfm: latent flow-matching training on selections and coarse-to-fine sampling.

Needs ``pip install "prunekit[lfm]"`` (torch, diffusers). Time runs from noise (t = 0) to
data (t = 1): x_t = (1 - t) x0 + t x1, velocity target x1 - x0.
"""
