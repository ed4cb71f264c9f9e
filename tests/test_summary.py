"""``pk.describe``: the summary ``prunekit info`` prints, as a Python call, on hand-made inputs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.io.summary import render

# Row norms 5, 1, NaN, 2 and 13: finite norms [5, 1, 2, 13].
X = np.array([[3, 4], [1, 0], [np.nan, 1], [0, 2], [5, 12]], dtype=np.float32)
NORMS = {"mean": 5.25, "min": 1.0, "p25": 1.75, "median": 3.5, "p75": 7.0, "max": 13.0}


@pytest.fixture
def emb_file(tmp_path):
    path = tmp_path / "emb.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = X
        f["ids"] = np.array(["a", "b", "c", "d", "e"], dtype=h5py.string_dtype("utf-8"))
        f["labels"] = np.array([0, 2, 2, 0, 5])
        f.create_group("extra")["note"] = np.zeros((3, 1))
    return path


def test_describe_a_file_by_path_and_as_embeddings(emb_file):
    d = pk.describe(emb_file)
    fingerprint = pk.load_embeddings(emb_file, drop_nonfinite=True).fingerprint
    assert d == {
        "path": str(emb_file), "key": "embeddings", "shape": [5, 2], "dtype": "float32",
        "keys": {"embeddings": [5, 2], "extra/note": [3, 1], "ids": [5], "labels": [5]},
        "ids": "str", "labels": 3, "norms": NORMS, "nonfinite_rows": [2], "n_nonfinite": 1,
        "fingerprint": fingerprint, "shards": None,
    }
    assert pk.describe(pk.load_embeddings(emb_file, drop_nonfinite=True)) == d
    json.dumps(d)  # JSON-ready as it is
    # The command prints exactly this summary.
    res = CliRunner().invoke(main, ["info", str(emb_file)])
    assert res.exit_code == 0 and res.output == render(d) + "\n"
    assert res.output.splitlines()[3] == "  row norms: mean 5.25  min 1  median 3.5  max 13"
    res = CliRunner().invoke(main, ["info", str(emb_file), "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == d


def test_describe_an_array_and_a_directory_of_shards(tmp_path):
    d = pk.describe(X[[0, 1, 3]].astype(np.float64))
    assert (d["path"], d["shape"], d["dtype"], d["keys"], d["ids"], d["labels"]) == (
        "<array>", [3, 2], "float64", {}, None, None)
    assert d["norms"] == {"mean": 8 / 3, "min": 1.0, "p25": 1.5, "median": 2.0, "p75": 3.5, "max": 5.0}
    assert (d["n_nonfinite"], d["shards"]) == (0, None)

    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "x_0.npy", X[:3])
    np.save(shards / "x_1.npy", X[3:])
    d = pk.describe(shards)
    assert d["shape"] == [5, 2] and d["keys"] == {} and d["nonfinite_rows"] == [2]
    assert d["norms"] == NORMS
    assert d["shards"] == [
        {"path": str(shards / "x_0.npy"), "rows": 3, "start": 0, "n_nonfinite": 1, "ids_from": None,
         "norms": {"mean": 3.0, "min": 1.0, "p25": 2.0, "median": 3.0, "p75": 4.0, "max": 5.0}},
        {"path": str(shards / "x_1.npy"), "rows": 2, "start": 3, "n_nonfinite": 0, "ids_from": None,
         "norms": {"mean": 7.5, "min": 2.0, "p25": 4.75, "median": 7.5, "p75": 10.25, "max": 13.0}},
    ]
    assert render(d).splitlines()[-3:] == [
        "  shards: 2",
        "    [0] x_0.npy: 3 rows from 0, NaN/inf 1, norms mean 3 min 1 max 5",
        "    [1] x_1.npy: 2 rows from 3, NaN/inf 0, norms mean 7.5 min 2 max 13",
    ]


def test_describe_takes_the_key_and_names_a_missing_file(emb_file, tmp_path):
    with h5py.File(emb_file, "a") as f:
        f["other"] = np.ones((5, 3), dtype=np.float16)
    d = pk.describe(emb_file, key="other")
    assert (d["key"], d["shape"], d["dtype"], d["n_nonfinite"]) == ("other", [5, 3], "float16", 0)
    assert d["norms"]["max"] == pytest.approx(3 ** 0.5, rel=1e-6)
    with pytest.raises(PrunekitError, match="not found"):
        pk.describe(tmp_path / "none.h5")
