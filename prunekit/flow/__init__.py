"""Closed-form flow matching: why pruning the training set changes so little.

For a finite training set the flow-matching objective has a closed-form minimiser v*
(:mod:`.velocity`). Integrating it from noise (t = 0) to data (t = 1) (:mod:`.ode`) sends
every noise point onto one training point; :mod:`.assign` measures how often that point
stays the same when the set is pruned, and how far the paths move. :mod:`.synthetic`
draws Gaussian-mixture data and :mod:`.study` runs whole sweeps.
"""

from prunekit.flow.assign import Comparison, compare_assignments, compare_subsets, nearest
from prunekit.flow.ode import (
    SOLVERS,
    FlowResult,
    PathDeviation,
    integrate,
    integrate_together,
    time_grid,
    trajectory,
)
from prunekit.flow.synthetic import GaussianMixture, gaussian_mixture
from prunekit.flow.velocity import ClosedFormField, posterior_mean, velocity

__all__ = [
    "SOLVERS",
    "ClosedFormField",
    "Comparison",
    "FlowResult",
    "GaussianMixture",
    "PathDeviation",
    "compare_assignments",
    "compare_subsets",
    "gaussian_mixture",
    "integrate",
    "integrate_together",
    "nearest",
    "posterior_mean",
    "time_grid",
    "trajectory",
    "velocity",
]
