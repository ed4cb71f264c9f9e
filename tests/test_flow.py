"""The closed-form flow-matching library: field, solvers, assignment, sweeps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from prunekit import PrunekitError
from prunekit.flow import (
    ClosedFormField,
    PathDeviation,
    compare_assignments,
    compare_subsets,
    gaussian_mixture,
    integrate,
    integrate_together,
    nearest,
    posterior_mean,
    time_grid,
    velocity,
)
from prunekit.flow.study import dimension_study


def dense_mean(x: np.ndarray, t: float, x1: np.ndarray) -> np.ndarray:
    """The definition, literally: softmax of -||x - t x1_i||^2 / (2 (1 - t)^2), in float64."""
    d2 = ((x[:, None, :] - t * x1[None, :, :]) ** 2).sum(-1)
    logits = -d2 / (2 * (1 - t) ** 2)
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return w @ x1


def dense_velocity(x: np.ndarray, t: float, x1: np.ndarray) -> np.ndarray:
    return (dense_mean(x, t, x1) - x) / (1 - t)


# --- the field ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.3, 0.9, 0.999, 1 - 1e-9])
def test_blocked_equals_dense_for_every_block_size(t):
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((9, 5)) + 3.0  # off-centre data
    x = rng.standard_normal((6, 5))
    ref = dense_mean(x, t, x1)
    for block in range(1, 10):
        got = posterior_mean(x, t, x1, dtype="float64", block=block)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 12),
    block=st.integers(1, 12),
    t=st.floats(0.0, 0.99),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_blocked_equals_dense_property(seed, n, block, t, scale):
    rng = np.random.default_rng(seed)
    x1 = scale * rng.standard_normal((n, 3))
    x = scale * rng.standard_normal((4, 3))
    got = velocity(x, t, x1, dtype="float64", block=block)
    np.testing.assert_allclose(got, dense_velocity(x, t, x1), rtol=1e-9, atol=1e-9 * scale / (1 - t))


def test_extreme_distances_near_t1_do_not_overflow():
    # Distances of 1e4 at 1 - t = 1e-12: the logits are ~1e32 (float64) and overflow float32.
    rng = np.random.default_rng(1)
    x1 = 1e4 * rng.standard_normal((7, 4))
    x = 1e4 * rng.standard_normal((5, 4))
    t = 1 - 1e-12
    expected = x1[np.argmin(((x[:, None] - t * x1[None]) ** 2).sum(-1), axis=1)]
    for dtype in ("float32", "float64"):
        for block in (1, 3, 7):
            m = posterior_mean(x, t, x1, dtype=dtype, block=block)
            assert np.isfinite(m).all()
            np.testing.assert_allclose(m, expected, rtol=1e-6 if dtype == "float32" else 1e-12)
            assert np.isfinite(velocity(x, t, x1, dtype=dtype, block=block)).all()


def test_field_at_t0_points_to_the_data_mean():
    rng = np.random.default_rng(2)
    x1, x = rng.standard_normal((10, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(velocity(x, 0.0, x1, dtype="float64"), x1.mean(0) - x, atol=1e-14)


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(3)
    x1, x = rng.standard_normal((50, 16)) + 10.0, rng.standard_normal((8, 16))
    for t in (0.2, 0.6):
        a = posterior_mean(x, t, x1, dtype="float32", block=7)
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, dense_mean(x, t, x1), rtol=0, atol=1e-4)


def test_subset_shares_storage_and_equals_a_fresh_field():
    rng = np.random.default_rng(4)
    x1, x = rng.standard_normal((20, 4)), rng.standard_normal((5, 4))
    keep = np.array([17, 2, 5, 11, 3])
    for block in (1, 2, 5, None):
        sub = ClosedFormField(x1, dtype="float64", block=block).subset(keep)
        assert sub.n == 5 and sub.points().tolist() == [2, 3, 5, 11, 17]
        np.testing.assert_allclose(sub.posterior_mean(x, 0.7), dense_mean(x, 0.7, x1[np.sort(keep)]), atol=1e-12)
    nested = ClosedFormField(x1, dtype="float64").subset(keep).subset([0, 4])
    assert nested.points().tolist() == [2, 17]


def test_field_rejects_bad_input():
    x1 = np.ones((3, 2))
    f = ClosedFormField(x1)
    with pytest.raises(PrunekitError, match=r"\[0, 1\)"):
        f.velocity(np.zeros((1, 2)), 1.0)
    with pytest.raises(PrunekitError, match="particles must be"):
        f.velocity(np.zeros((1, 3)), 0.5)
    with pytest.raises(PrunekitError, match="float32 or float64"):
        ClosedFormField(x1, dtype="float16")
    with pytest.raises(PrunekitError, match="NaN"):
        ClosedFormField(np.array([[0.0, np.nan]]))
    with pytest.raises(PrunekitError, match="at least one"):
        f.subset([])
    with pytest.raises(PrunekitError, match="lie in"):
        f.subset([3])


# --- solvers ------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_one_training_point_gives_the_straight_line(solver):
    rng = np.random.default_rng(5)
    target = rng.standard_normal((1, 6)) * 4
    x0 = rng.standard_normal((3, 6))
    res = integrate(ClosedFormField(target, dtype="float64"), x0, steps=10, solver=solver,
                    keep_path=True, progress=False)
    t = time_grid(10)[:, None, None]
    np.testing.assert_allclose(res.path, (1 - t) * x0[None] + t * target[None], atol=1e-12)
    np.testing.assert_array_equal(res.end, np.repeat(target, 3, axis=0))


def test_two_far_apart_points_each_particle_goes_to_its_nearer_one():
    # Points +-a u are symmetric about the origin, so the hyperplane x.u = 0 is invariant
    # under the flow: a particle ends on the point on its side, the nearer one to x0.
    rng = np.random.default_rng(6)
    u = rng.standard_normal(8)
    u /= np.linalg.norm(u)
    x1 = np.stack([20 * u, -20 * u])
    x0 = rng.standard_normal((200, 8))
    x0 = x0[np.abs(x0 @ u) > 0.05]
    field = ClosedFormField(x1, dtype="float64")
    end = integrate(field, x0, steps=50, progress=False).end
    expected = np.where(x0 @ u > 0, 0, 1)
    np.testing.assert_array_equal(nearest(field, end), expected)
    np.testing.assert_allclose(end, x1[expected], atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_end_points_are_training_points(solver):
    rng = np.random.default_rng(7)
    x1 = rng.standard_normal((40, 10))
    field = ClosedFormField(x1, dtype="float64")
    end = integrate(field, rng.standard_normal((30, 10)), steps=40, solver=solver, progress=False).end
    np.testing.assert_allclose(end, x1[nearest(field, end)], atol=1e-10)


def test_heun_is_more_accurate_than_euler():
    # No closed form exists for two training points, so the reference is scipy's DOP853
    # at rtol 1e-12 on the dense formula (independent of the code under test). Errors are
    # taken at t = 1/2, away from the singularity of v* at t = 1. Euler is first order
    # (error halves when K doubles), Heun second order (error quarters).
    x1 = np.array([[1.5, 0.0], [-0.5, 1.0], [0.2, -1.2]])
    x0 = np.array([[0.3, -0.4], [-1.0, 0.8]])

    def rhs(t, y):
        return dense_velocity(y.reshape(x0.shape), t, x1).ravel()

    ref = solve_ivp(rhs, (0, 0.5), x0.ravel(), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    field = ClosedFormField(x1, dtype="float64")

    def error(solver, steps):
        path = integrate(field, x0, steps=steps, solver=solver, keep_path=True, progress=False).path
        return np.abs(path[steps // 2].ravel() - ref).max()

    e_euler = [error("euler", k) for k in (32, 64)]
    e_heun = [error("heun", k) for k in (32, 64)]
    assert e_heun[0] < e_euler[0] / 20
    assert 1.7 < e_euler[0] / e_euler[1] < 2.3
    assert 3.4 < e_heun[0] / e_heun[1] < 4.6


def test_solver_options_are_checked():
    field = ClosedFormField(np.ones((2, 3)))
    with pytest.raises(PrunekitError, match="unknown solver"):
        integrate(field, np.zeros((1, 3)), steps=3, solver="rk4", progress=False)
    with pytest.raises(PrunekitError, match="positive integer"):
        integrate(field, np.zeros((1, 3)), steps=0, progress=False)
    with pytest.raises(PrunekitError, match=r"\(M x 3\)"):
        integrate(field, np.zeros((1, 2)), steps=3, progress=False)


# --- comparison ---------------------------------------------------------------------------


def test_streamed_path_deviation_matches_the_definition():
    rng = np.random.default_rng(8)
    x1 = rng.standard_normal((12, 5))
    x0 = rng.standard_normal((9, 5))
    full = ClosedFormField(x1, dtype="float64")
    sub = full.subset(np.arange(0, 12, 2))
    runs = integrate_together(full, [sub], x0, steps=15, progress=False)
    a = integrate(full, x0, steps=15, keep_path=True, progress=False)
    b = integrate(sub, x0, steps=15, keep_path=True, progress=False)
    expected = np.sqrt(((a.path - b.path) ** 2).sum(-1).mean(0) / 5)  # mean over k = 0..K
    np.testing.assert_allclose(runs.deviations[0], expected, rtol=1e-12)
    np.testing.assert_array_equal(runs.reference_end, a.end)
    np.testing.assert_array_equal(runs.ends[0], b.end)


def test_path_deviation_by_hand():
    meter = PathDeviation(2, dim=2)
    meter.update(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0], [1.0, 1.0]]))
    meter.update(np.zeros((2, 2)), np.zeros((2, 2)))
    np.testing.assert_allclose(meter.value(), [np.sqrt(25 / 2 / 2), 0.0])


def test_nearest_is_the_brute_force_argmin_with_ties_to_the_lowest():
    rng = np.random.default_rng(9)
    x1 = rng.standard_normal((30, 4))
    x1[17] = x1[4]  # a duplicate: ties go to 4
    pts = np.vstack([rng.standard_normal((20, 4)), x1[[4, 17, 29]]])
    brute = ((pts[:, None] - x1[None]) ** 2).sum(-1).argmin(1)
    for block in (1, 4, 30):
        field = ClosedFormField(x1, dtype="float64", block=block)
        np.testing.assert_array_equal(nearest(field, pts), brute)
        assert nearest(field, x1[[17]])[0] == 4
        sub = field.subset([3, 17, 29])  # only 17 of the duplicates: positions are full-set ones
        assert nearest(sub, x1[[4]])[0] == 17


def test_compare_assignments_by_hand():
    full = np.array([0, 1, 2, 3, 2])
    subset = np.array([0, 5, 2, 2, 5])
    c = compare_assignments(full, subset, kept=np.array([0, 2, 5]), deviation=np.array([0, 10, 2, 3, 4.0]))
    assert (c.n_sources, c.n_kept, c.n_retained) == (5, 3, 3)  # particles 0, 2, 4
    assert c.unchanged_fraction == pytest.approx(2 / 3)
    assert c.deviation_median == 3.0 and c.deviation_p95 == pytest.approx(8.8)  # all five
    summary = c.summary()
    assert summary["path_deviation_retained_median"] == 2.0  # particles 0, 2, 4: 0, 2, 4
    assert summary["path_deviation_retained_p95"] == pytest.approx(3.8)
    assert c.retained.tolist() == [True, False, True, False, True]
    none_kept = compare_assignments(full, subset, kept=np.array([7]), deviation=np.zeros(5))
    assert none_kept.n_retained == 0 and none_kept.summary()["unchanged_fraction"] is None
    assert none_kept.summary()["path_deviation_retained_median"] is None


def test_full_set_against_itself_is_unchanged():
    rng = np.random.default_rng(10)
    x1 = rng.standard_normal((25, 6))
    field = ClosedFormField(x1)
    (c,) = compare_subsets(field, [np.arange(25)], rng.standard_normal((40, 6)), steps=20, progress=False)
    assert c.unchanged_fraction == 1.0 and c.n_retained == 40
    assert c.deviation_median == 0.0 and c.deviation_p95 == 0.0


def test_high_dimension_is_more_stable_than_low_dimension():
    # The paper's trend, at pr = 0.5 with fixed seeds; tiny sizes keep the test fast.
    for seed in (0, 1):
        rows = dimension_study([2, 64], [0.5], n=60, components=4, n_sources=64, seed=seed,
                               steps=20, dtype="float64", progress=False)
        low, high = rows[0]["unchanged_fraction"], rows[1]["unchanged_fraction"]
        assert (rows[0]["dim"], rows[1]["dim"]) == (2, 64)
        assert high > low + 0.2, (seed, low, high)


# --- synthetic data -----------------------------------------------------------------------


def test_gaussian_mixture_shapes_labels_and_seed():
    g = gaussian_mixture(103, 7, 5, spread=0.25, seed=3)
    assert g.points.shape == (103, 7) and g.points.dtype == np.float32
    assert sorted(np.bincount(g.labels).tolist()) == [20, 20, 21, 21, 21]
    resid = g.points - g.means[g.labels]
    assert 0.2 < resid.std() < 0.3  # the spread around each component mean
    again = gaussian_mixture(103, 7, 5, spread=0.25, seed=3)
    assert again.points.tobytes() == g.points.tobytes()
    assert gaussian_mixture(103, 7, 5, spread=0.25, seed=4).points.tobytes() != g.points.tobytes()


def test_gaussian_mixture_rejects_bad_options():
    with pytest.raises(PrunekitError, match="components"):
        gaussian_mixture(3, 2, 4)
    with pytest.raises(PrunekitError, match="spread"):
        gaussian_mixture(3, 2, 1, spread=-1)
    with pytest.raises(PrunekitError, match="n >= 1"):
        gaussian_mixture(0, 2, 1)


def test_dimension_study_checks_every_dimension_before_any_work(monkeypatch):
    from prunekit.flow import study

    def no_work(*args, **kwargs):
        raise AssertionError("data were drawn before the dimensions were checked")

    monkeypatch.setattr(study, "gaussian_mixture", no_work)
    with pytest.raises(PrunekitError, match="dimensions must be positive integers, got 0"):
        dimension_study([4, 0], [0.5], progress=False)


def test_one_seed_gives_independent_means_sources_and_subsets():
    # The mixture means, the noise sources and the random subsets of one seed come from
    # separate streams: no source repeats a mean (they used to be equal, row for row).
    from prunekit.flow.study import draw_sources

    for seed in (0, 1, 12345):
        g = gaussian_mixture(50, 6, 5, spread=0.1, seed=seed)
        x0 = draw_sources(5, 6, seed)
        assert not np.isclose(x0[:, None, :], g.means[None, :, :]).all(axis=2).any()
        # nor a scaled copy: the correlation of sources with means is that of independent draws
        corr = np.corrcoef(x0.ravel(), g.means.ravel())[0, 1]
        assert abs(corr) < 0.6, corr
        assert np.array_equal(x0, draw_sources(5, 6, seed))  # still reproducible


def test_pk_stability_is_the_cli_in_one_call(tmp_path):
    import json

    from click.testing import CliRunner

    import prunekit as pk
    from prunekit.cli import main

    g = gaussian_mixture(40, 5, 3, spread=0.3, seed=2)
    g.save(tmp_path / "g.h5")
    doc = pk.stability(tmp_path / "g.h5", prs=[0.25, 0.5], seed=3, steps=8, n_sources=16)
    res = CliRunner().invoke(main, ["stability", str(tmp_path / "g.h5"), "--pr", "0.25", "0.5", "--seed", "3",
                                    "--steps", "8", "--n-sources", "16", "-q", "-o", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    cli = json.loads((tmp_path / "s.json").read_text())
    assert cli["rows"] == doc["rows"] and [r["n_kept"] for r in doc["rows"]] == [30, 20]
    assert doc["settings"]["subsets"] == "random" and doc["settings"]["n_sources"] == 16
    # arrays work as well as files, and the options are checked before any work
    same = pk.stability(g.points, prs=[0.25, 0.5], seed=3, steps=8, n_sources=16)
    assert same["rows"] == doc["rows"]
    for bad, message in ((dict(prs=[0.5], seed=-1), "seed must"), (dict(), "one of the two"),
                         (dict(prs=[0.5], solver="rk4"), "solver must be one of euler, heun"),
                         (dict(prs=[0.5], invert=True), "give scores too")):
        with pytest.raises(PrunekitError, match=message):
            pk.stability(g.points, **bad)
