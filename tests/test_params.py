"""Parameter specs: validation by the library, options and flag names in the CLI."""

from __future__ import annotations

import importlib
import re
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.cli.score import score as score_command
from prunekit.methods import REGISTRY, register
from prunekit.params import Param, ParamError, validate


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        (Param("k", "int", 1, "", low=1), 3, 3),
        (Param("k", "int", 1, "", low=1), 3.0, 3),  # an integral float is an integer
        (Param("k", "int", 1, "", low=1), "7", 7),  # CLI text
        (Param("s", "float", 1.0, "", low=0, open_low=True), "2.5", 2.5),
        (Param("s", "float", "auto", "", low=0, open_low=True, special=("auto",)), "auto", "auto"),
        (Param("b", "bool", True, ""), False, False),
        (Param("c", "choice", "a", "", choices=("a", "b")), "b", "b"),
        (Param("m", "int", None, "", low=1, nullable=True), None, None),
    ],
)
def test_valid_values_are_normalised(param, value, expected):
    got = param.check(value, "demo")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("param", "value", "problem"),
    [
        (Param("k", "int", 1, "", low=1), 0, "must be an integer >= 1 (got 0)"),
        (Param("k", "int", 1, "", low=1), 2.5, "must be an integer >= 1 (got 2.5)"),
        (Param("k", "int", 1, "", low=1), True, "must be an integer >= 1 (got True)"),
        (Param("k", "int", 1, "", low=1, high=10), 11, "must be an integer in [1, 10] (got 11)"),
        (Param("e", "float", 0.5, "", low=0, high=1, open_high=True), 1, "must be a number in [0, 1) (got 1)"),
        (Param("s", "float", 1.0, "", low=0, open_low=True), 0.0, "must be a number > 0 (got 0.0)"),
        (Param("s", "float", 1.0, "", low=0, open_low=True), float("nan"), "must be a number > 0"),
        (Param("s", "float", 1.0, "", low=0, open_low=True), "inf", "must be a number > 0"),
        (Param("c", "choice", "a", "", choices=("a", "b")), "z", "must be one of a, b (got 'z')"),
        (Param("p", "path", None, ""), "", "must be a file path"),
        (Param("m", "int", 5, "", low=1), None, "is required"),
    ],
)
def test_bad_values_name_the_parameter(param, value, problem):
    with pytest.raises(ParamError) as info:
        param.check(value, "demo")
    assert str(info.value).startswith(f"method 'demo': parameter {param.name} {problem}")
    assert info.value.cli_message().startswith(f"{param.cli_flag} {problem}")


def test_validate_fills_defaults_and_refuses_unknown_names():
    spec = (Param("k", "int", 24, "", low=1), Param("from_file", "path", None, "", flag="--from"))
    assert validate("m", spec, {"from_file": "x.csv"}) == {"k": 24, "from_file": "x.csv"}
    with pytest.raises(pk.PrunekitError, match="method 'm' has no parameter kk; it takes: k, from_file"):
        validate("m", spec, {"kk": 3, "from_file": "x"})
    with pytest.raises(ParamError, match="parameter from_file is required"):
        validate("m", spec, {})


def test_score_accepts_plain_arrays_like_an_estimator():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.05, size=(20, 3)) for c in (-5.0, 0.0, 5.0)])
    from_array = pk.score(x, "kmeans", k=3, spherical=False, progress=False)
    from_emb = pk.score(pk.Embeddings.from_array(x), "kmeans", k=3, spherical=False, progress=False)
    np.testing.assert_array_equal(from_array.cluster, from_emb.cluster)
    # three planted blobs, each one cluster
    assert sorted(np.bincount(from_array.cluster).tolist()) == [20, 20, 20]
    assert pk.score(x.tolist(), "random", seed=3).score.shape == (60,)
    with pytest.raises(pk.PrunekitError, match="load it with prunekit.load_embeddings"):
        pk.score("emb.h5", "random")
    with pytest.raises(pk.PrunekitError, match="non-numeric"):
        pk.score(np.array([["a", "b"]]), "random")


def test_library_checks_seed_and_parameters_before_work():
    x = np.ones((4, 2))
    with pytest.raises(pk.PrunekitError, match="seed must lie in"):
        pk.score(x, "random", seed=-1)
    with pytest.raises(ParamError, match="parameter k must be an integer >= 1"):
        pk.score(x, "kmeans", k=0)


def test_cli_has_exactly_one_option_per_spec_parameter():
    flags = {opt for p in score_command.params for opt in [*p.opts, *p.secondary_opts]}
    for method in REGISTRY.values():
        for p in method.params:
            assert p.cli_flag in flags, (method.name, p.name)
            if p.negation:
                assert f"--{p.negation}" in flags


def test_cli_maps_parameter_errors_to_flags(tmp_path):
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    runner = CliRunner()
    emb = str(tmp_path / "emb.npy")
    out = tmp_path / "s.h5"
    res = runner.invoke(main, ["score", emb, "-m", "herding", "--sigma", "-2", "-o", str(out)])
    assert res.exit_code == 2
    assert res.output.strip() == (
        "Error: --sigma must be a number > 0 or 'auto' (got '-2') (method 'herding')."
    )
    res = runner.invoke(main, ["score", emb, "-m", "kmeans", "--k", "0", "-o", str(out)])
    assert res.exit_code == 2 and "--k must be an integer >= 1 (got 0)" in res.output
    res = runner.invoke(main, ["score", emb, "-m", "random", "--k", "3", "-o", str(out)])
    assert res.exit_code == 2
    assert "--k does not apply to method 'random'; it takes: no method options" in res.output
    assert not out.exists()
    res = runner.invoke(main, ["score", emb, "-m", "kmeans", "--euclidean", "--k", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert pk.load_scores(out).params["spherical"] is False


def test_a_registration_whose_default_disagrees_fails_at_import(tmp_path, monkeypatch):
    (tmp_path / "pk_bad_method.py").write_text(textwrap.dedent("""
        from prunekit.methods import register
        from prunekit.params import Param

        @register("bad-default", params=(Param("k", "int", 24, "Clusters.", low=1),))
        def bad(emb, *, seed=0, progress=True, k=25):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError) as info:
        importlib.import_module("pk_bad_method")
    sys.modules.pop("pk_bad_method", None)
    assert str(info.value) == (
        "method 'bad-default' (pk_bad_method.bad): parameter k defaults to 24 in its Param "
        "but to 25 in the function; make them equal.")
    assert "bad-default" not in REGISTRY


@pytest.mark.parametrize(
    ("fn_source", "problem"),
    [
        ("def f(emb, *, seed=0, progress=True, k=24.0): pass",  # same value, other type
         "parameter k defaults to 24 in its Param but to 24.0 in the function"),
        ("def f(emb, *, seed=0, progress=True, k): pass",
         "parameter k defaults to 24 in its Param but to none in the function"),
        ("def f(emb, k=24, *, seed=0, progress=True): pass",  # positional: pk.score passes by name
         "declares parameter k but takes no keyword-only argument k"),
        ("def f(emb, *, seed=0, progress=True, k=24, alpha=1.0): pass",
         "takes keyword argument(s) alpha that its params do not declare"),
    ],
)
def test_registration_checks_the_function_against_its_spec(fn_source, problem):
    scope: dict = {}
    exec(fn_source, scope)
    with pytest.raises(TypeError, match=re.escape(problem)):
        register("bad-spec", params=(Param("k", "int", 24, "", low=1),))(scope["f"])
    assert "bad-spec" not in REGISTRY


def test_registered_methods_declare_what_plan_and_score_ask_for():
    assert {name for name, m in REGISTRY.items() if m.cost is not None} == set(REGISTRY)
    assert REGISTRY["kmeans"].detail({"k": 3, "inertia": 1.25, "backend_used": "faiss"}) == (
        " (k=3, inertia 1.25, backend faiss)")
    assert REGISTRY["random"].detail({}) == ""
    counts = [{"eps": 0.01, "removed": 3}, {"eps": 0.1, "removed": 7}]
    assert REGISTRY["semdedup"].detail({"duplicates": counts}) == (
        " (near-duplicates removed at eps 0.01: 3, 0.1: 7; select --eps E applies one)")
