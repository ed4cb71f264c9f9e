"""One declaration per parameter: specs drive the library's checks and the commands' options.

The training, sampling and stability settings are tuples of Param; these tests check that
the library and the command line take them from there (same names, defaults, ranges, help),
that the one solver list is shared, and that an error names the parameter in the library
and the flag on the command line.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import click
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.cli.params import flags_of, option, options_from, user_message
from prunekit.cli.stability import stability as stability_command
from prunekit.flow.ode import SOLVERS
from prunekit.flow.study import STABILITY_PARAMS, check_options
from prunekit.params import INT64_MAX, Param, ParamError, check_defaults, takes, validate


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return res.output.strip()


# ----------------------------------------------------------------------------- ParamError


def test_a_template_names_parameters_in_the_library_and_flags_on_the_command_line():
    err = ParamError("{steps} must be at most {} (got {}); use e.g. {steps:60}, and {resume:=True} "
                     "or {from_file}.", 100, 10**9, flags={"from_file": "--from"})
    assert str(err) == ("steps must be at most 100 (got 1000000000); use e.g. steps=60, and "
                        "resume=True or from_file.")
    assert err.cli_message() == ("--steps must be at most 100 (got 1000000000); use e.g. --steps 60, "
                                 "and --resume or --from.")
    # the running command's own spelling wins: an argument by its metavar, a renamed flag
    assert err.cli_message({"steps": "--n-steps", "resume": "RESUME"}).startswith(
        "--n-steps must be at most 100") and "and RESUME or --from." in err.cli_message(
        {"resume": "RESUME"})


def test_values_are_never_read_as_parameters():
    err = ParamError("{path} not found: {}", "/data/{path}/{}.h5")
    assert str(err) == "path not found: /data/{path}/{}.h5"
    assert err.cli_message() == "--path not found: /data/{path}/{}.h5"


def test_an_error_pickles_whole():  # a Ray worker's error reaches the driver unchanged
    import pickle

    from prunekit.flow.study import StudyOptionError

    for err in (ParamError("{path} not found: {}", "/data/{x}/{}.h5", flags={"path": "--in"}),
                StudyOptionError("give dims.", "add --dims.")):
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)
        assert again.cli_message() == err.cli_message()


def test_a_second_wording_for_the_command_line():
    err = ParamError("give dims, e.g. dims=[16, 256].", cli="add {dims}, e.g. {dims:16 256}.")
    assert str(err) == "give dims, e.g. dims=[16, 256]." and isinstance(err, pk.PrunekitError)
    assert err.cli_message() == "add --dims, e.g. --dims 16 256."


def test_user_message_uses_the_commands_flags_and_arguments():
    flags = flags_of(stability_command)
    assert flags["selections"] == "--selection" and flags["prs"] == "--pr"
    assert flags["n_sources"] == "--n-sources" and flags["data"] == "DATA"
    err = ParamError("{data} has no rows; give {prs}.")
    assert user_message(err, stability_command) == "DATA has no rows; give --pr."
    assert user_message(pk.PrunekitError("plain"), stability_command) == "plain"


# ----------------------------------------------------------------------------- Param kinds


@pytest.mark.parametrize(("param", "value", "expected"), [
    (Param("prs", "float", (), "", low=0, high=1, open_high=True, multiple=True), [0, 0.5], (0.0, 0.5)),
    (Param("prs", "float", (), "", low=0, high=1, open_high=True, multiple=True), np.array([0.25]),
     (0.25,)),
    (Param("labels", "int", None, "", multiple=True, nullable=True), None, None),
    (Param("dims", "int", (), "", low=1, multiple=True), ("3", 4.0), (3, 4)),
])
def test_multiple_values_are_checked_one_by_one(param, value, expected):
    assert param.check(value) == expected


@pytest.mark.parametrize(("param", "value", "message"), [
    (Param("prs", "float", (), "", low=0, high=1, open_high=True, multiple=True), [0.5, 1.0],
     "prs must be a number in [0, 1) (got 1.0)."),
    (Param("prs", "float", (), "", low=0, high=1, open_high=True, multiple=True), 0.5,
     "prs must be a list of values, each a number in [0, 1) (got 0.5)."),
    (Param("files", "path", (), "", multiple=True), "a.h5",
     "files must be a list of values, each a file path (got 'a.h5')."),
    (Param("seed", "int", 0, "", low=0, high=INT64_MAX), -1,
     "seed must be an integer in [0, 2**63 - 1] (got -1)."),
    (Param("ema", "float", 0.9, "", low=0, high=1, open_high=True), 1.0,
     "ema must be a number in [0, 1) (got 1.0)."),
])
def test_errors_without_a_method_name_the_parameter(param, value, message):
    with pytest.raises(ParamError) as info:
        param.check(value)
    assert str(info.value) == message
    assert info.value.cli_message() == param.cli_flag + message[len(param.name):]


def test_validate_without_a_method():
    spec = (Param("steps", "int", 100, "", low=1), Param("solver", "choice", "euler", "",
                                                          choices=SOLVERS))
    assert validate(None, spec, {"steps": "7"}) == {"steps": 7, "solver": "euler"}
    with pytest.raises(pk.PrunekitError, match="there is no parameter stpes; it takes: steps, solver"):
        validate(None, spec, {"stpes": 7})


# ----------------------------------------------------------------------------- takes / defaults


SPEC = (Param("k", "int", 3, "Clusters.", low=1), Param("tol", "float", 0.5, "", low=0))


def test_takes_checks_and_normalises_the_declared_keywords():
    @takes(SPEC)
    def fn(data, *, k=3, tol=0.5, progress=False):
        return data, k, tol, progress

    assert fn("x", k="4", tol=1) == ("x", 4, 1.0, False)
    assert fn("x", progress=True) == ("x", 3, 0.5, True)  # defaults are the spec's
    with pytest.raises(ParamError, match=r"^k must be an integer >= 1 \(got 0\)\.$"):
        fn("x", k=0)
    with pytest.raises(TypeError):  # an undeclared keyword is Python's error, as before
        fn("x", kk=2)


@pytest.mark.parametrize(("source", "problem"), [
    ("def fn(data, *, k=4, tol=0.5): pass", "parameter k defaults to 3 in its Param but to 4"),
    ("def fn(data, *, k=3.0, tol=0.5): pass", "parameter k defaults to 3 in its Param but to 3.0"),
    ("def fn(data, *, tol=0.5): pass", "takes no keyword argument k"),
])
def test_a_default_that_disagrees_with_the_spec_fails_at_import(source, problem):
    scope: dict = {}
    exec(source, scope)
    with pytest.raises(TypeError, match=problem):
        check_defaults(scope["fn"], SPEC)
    with pytest.raises(TypeError, match=problem):
        takes(SPEC)(scope["fn"])


# ----------------------------------------------------------------------------- options_from


def test_options_from_builds_each_kind():
    spec = (
        Param("n", "int", 64, "Samples.", low=1, high=INT64_MAX, cli_range=True),
        Param("block", "int", None, "Block.", low=1, nullable=True, cli_range=True),
        Param("steps", "int", 1000, "Steps.", low=1),  # the library checks the range
        Param("lr", "float", 1e-4, "", low=0, open_low=True),
        Param("sigma", "float", "auto", "Bandwidth.", special=("auto",)),
        Param("mode", "choice", "a", "Mode.", choices=("a", "b")),
        Param("ema", "bool", True, "EMA.", negation="no-ema"),
        Param("conditional", "bool", False, "Labels."),
        Param("prs", "float", (), "Fractions.", multiple=True, flag="--pr", metavar="P ..."),
        Param("selection", "path", None, "Selection.", nullable=True, dir_okay=True),
    )

    @click.command()
    @options_from(spec)
    def cmd(**kw):
        click.echo(repr(sorted(kw.items())))

    opts = {p.name: p for p in cmd.params}
    assert [p.name for p in cmd.params] == [p.name for p in spec]  # the spec's order
    assert (opts["n"].type.min, opts["n"].type.max) == (1, INT64_MAX)
    assert (opts["block"].type.min, opts["block"].type.max) == (1, None)
    assert opts["steps"].type is click.INT and opts["lr"].type is click.FLOAT
    assert opts["sigma"].type is click.STRING and list(opts["mode"].type.choices) == ["a", "b"]
    assert opts["ema"].opts == ["--ema"] and opts["ema"].secondary_opts == ["--no-ema"]
    assert opts["conditional"].is_flag and opts["prs"].multiple and opts["prs"].opts == ["--pr"]
    assert opts["selection"].type.dir_okay and opts["selection"].default is None
    res = CliRunner().invoke(cmd, [])
    assert res.output.strip() == repr(sorted({
        "n": 64, "block": None, "steps": 1000, "lr": 1e-4, "sigma": "auto", "mode": "a",
        "ema": True, "conditional": False, "prs": (), "selection": None}.items()))
    help_text = " ".join(CliRunner().invoke(cmd, ["--help"]).output.split())
    for needle in ("--n INTEGER RANGE Samples. [default: 64; 1<=x<=9223372036854775807]",
                   "--ema / --no-ema EMA. [default: ema]", "--pr P ... Fractions.",
                   "--lr FLOAT [default: 0.0001]", "--mode [a|b] Mode. [default: a]"):
        assert needle in help_text, needle
    assert "--conditional Labels. [" not in help_text  # a flag off by default shows no default
    res = CliRunner().invoke(cmd, ["--n", "0"])
    assert res.exit_code == 2 and "0 is not in the range 1<=x<=" in res.output


def test_option_overrides_help_and_default():
    p = Param("k", "int", 24, "Clusters.", low=1)
    opt = option(p, help="[kmeans] Clusters.", default=None)
    assert opt.help == "[kmeans] Clusters." and opt.default is None and not opt.show_default


# ----------------------------------------------------------------------------- one solver list


def test_there_is_one_solver_list():
    from prunekit.cli.stability import stability as stab
    from prunekit_lfm import solvers
    from prunekit_lfm.cli.evaluate import compare
    from prunekit_lfm.cli.sample import c2f_sweep, sample

    assert solvers.SOLVERS is SOLVERS
    for command in (stab, sample, c2f_sweep, compare):
        (solver,) = [p for p in command.params if p.name == "solver"]
        assert tuple(solver.type.choices) == SOLVERS and solver.default == "euler"
    with pytest.raises(ParamError, match=r"^solver must be one of euler, heun \(got 'rk4'\)\.$"):
        solvers.check_solver("rk4")


# ----------------------------------------------------------------------------- training


def _option_of(command, name):
    (opt,) = [p for p in command.params if p.name == name]
    return opt


def test_train_options_defaults_and_config_come_from_the_spec():
    pytest.importorskip("torch")
    from prunekit_lfm.cli.train import train as train_command
    from prunekit_lfm.runs import TrainConfig
    from prunekit_lfm.specs import TRAIN_PARAMS
    from prunekit_lfm.train import train

    config = {f.name: f.default for f in fields(TrainConfig)}
    for p in TRAIN_PARAMS:
        opt = _option_of(train_command, p.name)
        assert opt.default == p.default and (opt.help or "") == p.help, p.name
        assert [*opt.opts, *opt.secondary_opts] == [p.cli_flag], p.name
        if p.name != "steps":  # a stored config has 0 steps until it is trained
            assert config[p.name] == p.default, p.name
    assert train.params is TRAIN_PARAMS  # and its keyword defaults were checked at import
    check_defaults(train, TRAIN_PARAMS)


def test_a_bad_training_setting_is_named_before_any_file_is_read(tmp_path):
    pytest.importorskip("torch")
    from prunekit_lfm.train import train

    missing = tmp_path / "nothing.h5"  # never opened: the settings are checked first
    with pytest.raises(ParamError) as info:
        train(str(missing), str(tmp_path / "run"), lr=0)
    assert str(info.value) == "lr must be a number > 0 (got 0)."
    res = _run("lfm", "train", missing, "-o", tmp_path / "run", "--cfg-dropout", "1", "--device", "cpu")
    assert _error_line(res) == "Error: --cfg-dropout must be a number in [0, 1) (got 1.0)."
    res = _run("lfm", "train", missing, "-o", tmp_path / "run", "--device", "bogus")
    assert _error_line(res).startswith("Error: --device 'bogus' is not a device name; use auto")
    assert not (tmp_path / "run").exists()


def test_a_stored_config_is_checked_by_the_same_spec():
    pytest.importorskip("torch")
    from prunekit_lfm.runs import TrainConfig

    assert TrainConfig(steps=0).steps == 0  # a run not yet trained
    with pytest.raises(pk.PrunekitError) as info:
        TrainConfig(lr=-1.0, t_schedule="cosine", world_size=1.5)
    assert str(info.value) == (
        "world_size must be an integer (got 1.5); lr must be a number > 0 (got -1.0); "
        "t_schedule must be one of uniform, logit_normal (got 'cosine').")


def test_the_trainer_samples_every_time_schedule_the_spec_declares():
    torch = pytest.importorskip("torch")
    from prunekit_lfm.fm_path import sample_t
    from prunekit_lfm.specs import T_SCHEDULES

    for schedule in T_SCHEDULES:
        t = sample_t(256, torch.Generator().manual_seed(0), schedule=schedule)
        assert t.shape == (256,) and bool(((t >= 0) & (t <= 1)).all())


# ----------------------------------------------------------------------------- sampling


def test_sampling_config_fields_and_options_come_from_the_spec():
    pytest.importorskip("torch")
    from prunekit_lfm.cli.sample import sample
    from prunekit_lfm.sampling import SamplingConfig
    from prunekit_lfm.specs import N_SAMPLES, SAMPLING_PARAMS

    assert {f.name: f.default for f in fields(SamplingConfig)} == {
        p.name: p.default for p in SAMPLING_PARAMS}
    for p in (N_SAMPLES, *SAMPLING_PARAMS):
        opt = _option_of(sample, p.name)
        assert (opt.help or "") == p.help and [*opt.opts, *opt.secondary_opts][0] == p.cli_flag
        assert opt.default == p.default, p.name
    with pytest.raises(ParamError, match=r"^cfg must be a number \(got nan\)\.$"):
        SamplingConfig(cfg=float("nan"))
    with pytest.raises(ParamError, match=r"^steps must be at most 100000 \(got 100001\)"):
        SamplingConfig(steps=100_001)
    assert SamplingConfig(labels=[]).labels is None and SamplingConfig(labels=[2]).labels == (2,)


def test_sampling_errors_name_the_setting_or_its_flag(tmp_path):
    pytest.importorskip("torch")
    from lfm_stand_ins import make_run

    from prunekit_lfm.generate import load_models
    from prunekit_lfm.sampling import SamplingConfig, sample

    run = make_run(tmp_path / "run")
    models, _ = load_models(run, None, config=SamplingConfig(device="cpu"))
    with pytest.raises(ParamError) as info:
        sample(models["model"], 2, SamplingConfig(steps=1, labels=(1,)))
    assert str(info.value) == "the model is unconditional (trained without labels); drop labels."
    res = _run("lfm", "sample", run, "--n", 2, "--steps", 1, "--labels", 1, "--device", "cpu",
               "-o", tmp_path / "s.h5")
    assert _error_line(res) == ("Error: the model is unconditional (trained without labels); "
                                "drop --labels.")
    res = _run("lfm", "sample", run, "--n", 2, "--start", INT64_MAX, "--device", "cpu",
               "-o", tmp_path / "s.h5")
    assert _error_line(res).startswith(f"Error: --start {INT64_MAX} with --n 2: sample indices")
    assert not (tmp_path / "s.h5").exists()


def test_plugin_commands_build_their_options_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import prunekit_lfm.cli.train, prunekit_lfm.cli.sample, prunekit_lfm.cli.evaluate\n"
            "import prunekit_lfm.specs\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- stability


def test_stability_keywords_and_options_are_one_spec():
    for p in STABILITY_PARAMS:
        opt = _option_of(stability_command, p.name)
        assert opt.opts == [p.cli_flag] and (opt.help or "") == p.help
        assert opt.multiple == p.multiple
        assert opt.default == p.default, p.name
    check_defaults(pk.stability, STABILITY_PARAMS)
    values = check_options("emb.h5", {"prs": ["0.25", 0.5], "n_sources": 12.0})
    assert values["prs"] == (0.25, 0.5) and values["n_sources"] == 12 and values["steps"] == 100


def test_stability_errors_name_parameters_in_the_library_and_flags_in_the_cli(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    for kw, message in ((dict(prs=[0.5], block=0), "block must be an integer >= 1 (got 0)."),
                        (dict(prs=[0.5], steps=10**6), "steps=1000000 is above 100000: memory "),
                        (dict(prs=[0.5], dtype="float16"),
                         "dtype must be one of float32, float64 (got 'float16')."),
                        (dict(prs=["x"]), "prs must be a number in [0, 1) (got 'x').")):
        with pytest.raises(ParamError) as info:
            pk.stability(x, **kw)
        assert str(info.value).startswith(message)
    res = _run("stability", "gmm", "--dims", "0", "--pr", "0.5", "-q")
    assert _error_line(res) == "Error: --dims must be an integer >= 1 (got 0)."
    res = _run("stability", "gmm", "--pr", "0.5", "1.5", "--dims", "4", "-q")
    assert _error_line(res) == "Error: --pr must be a number in [0, 1) (got 1.5)."
    res = _run("stability", "gmm", "--pr", "0.5", "--dims", "4", "--steps", "100001", "-q",
               "-o", tmp_path / "s.json")
    assert _error_line(res).startswith("Error: --steps 100001 is above 100000: memory")
    assert not (tmp_path / "s.json").exists()
