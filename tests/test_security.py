"""A shared folder where someone else plants links and crafted files.

Each scenario names a victim file the attacker wants overwritten (or read), runs the
command as its victim would, and asserts that the victim's bytes are unchanged and the
command exits 2 with one line naming the problem; or, for caches, that the planted link is
ignored and left as it was. Also: HDF5 files that reach other files, the scan cache's
verification (edited entries, replaced shards), glob loops and the private-file helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.io import atomic, scan
from prunekit.io.atomic import (
    TMP_PREFIX,
    create_exclusive,
    create_temp,
    private_dir,
    temp_name,
    write_text,
)

PRECIOUS = b"precious bytes\n"


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    """A folder with embeddings, scores, a selection and a victim file; the cwd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    with h5py.File("emb.h5", "w") as f:
        f["embeddings"] = x
    scores = pk.score(pk.load_embeddings("emb.h5"), "kmeans", k=2, seed=0, progress=False)
    scores.save("scores.h5")
    pk.select(scores, 0.5).save("sel.h5")
    (tmp_path / "precious.txt").write_bytes(PRECIOUS)
    return tmp_path


def shards(d: Path, n: int = 3, rows: int = 50) -> list[np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((rows, 4)).astype(np.float32) for _ in range(n)]
    for i, a in enumerate(parts):
        np.save(d / f"e_{i}.npy", a)
    return parts


def fails_cleanly(argv: list[str], *words: str) -> str:
    res = CliRunner().invoke(main, argv)
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert len(err.splitlines()) == 1 and err.startswith("Error:") and "Traceback" not in res.output, err
    for w in words:
        assert w in err, err
    return err


# -- outputs through planted links --------------------------------------------------------------


@pytest.mark.parametrize("argv, out", [
    (["select", "scores.h5", "--pr", "0.5", "-o", "out.h5"], "out.h5"),
    (["export", "sel.h5", "--format", "json", "-o", "sel.json"], "sel.json"),
    (["score", "emb.h5", "-m", "random", "-o", "s.h5"], "s.h5"),
    (["stability", "emb.h5", "--pr", "0.5", "--steps", "2", "-o", "st.json"], "st.json"),
])
def test_an_output_that_is_a_planted_link_is_refused(shared, argv, out):
    os.symlink(shared / "precious.txt", out)
    fails_cleanly(argv, f"{out} is a symbolic link to {shared / 'precious.txt'}",
                  "Pass the target path itself")
    assert (shared / "precious.txt").read_bytes() == PRECIOUS
    assert os.readlink(out) == str(shared / "precious.txt")


def test_a_dangling_planted_link_is_not_followed_either(shared):
    os.symlink(shared / "created-by-us.h5", "out.h5")
    fails_cleanly(["select", "scores.h5", "--pr", "0.5", "-o", "out.h5"], "symbolic link")
    assert not (shared / "created-by-us.h5").exists()


def test_planted_links_at_temp_names_are_never_written_through(shared, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = temp_name(shared, int(dead))  # looks like a dead run's temp file
    stale.symlink_to(shared / "precious.txt")
    # The next random name is one the attacker planted: it is skipped, not opened.
    names = iter(["feedfacefeedface", "0011223344556677"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    guessed = shared / f"{TMP_PREFIX}{os.getpid()}.{atomic.host_tag()}.feedfacefeedface"
    guessed.symlink_to(shared / "precious.txt")
    write_text(shared / "out.txt", "result")
    assert (shared / "out.txt").read_text() == "result"
    assert (shared / "precious.txt").read_bytes() == PRECIOUS
    assert stale.is_symlink() and guessed.is_symlink()  # other people's names are left alone


def test_create_exclusive_and_private_dir_never_follow_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(FileExistsError):
        create_exclusive(tmp_path / "link")
    fd, tmp = create_temp(tmp_path)
    os.close(fd)
    assert tmp.name.startswith(TMP_PREFIX) and (tmp.stat().st_mode & 0o777) == 0o600
    (tmp_path / "victim_dir").mkdir(mode=0o755)
    (tmp_path / "cache").symlink_to(tmp_path / "victim_dir")
    with pytest.raises(pk.PrunekitError, match="cache is a symbolic link"):
        private_dir(tmp_path / "cache")
    assert (tmp_path / "victim_dir").stat().st_mode & 0o777 == 0o755
    (tmp_path / "loose").mkdir(mode=0o755)
    assert private_dir(tmp_path / "loose").stat().st_mode & 0o777 == 0o700  # ours: tightened
    assert private_dir(tmp_path / "new" / "p").stat().st_mode & 0o777 == 0o700
    assert victim.read_bytes() == PRECIOUS


# -- outputs that are inputs under another name ------------------------------------------------


def test_a_shard_linked_to_the_output_counts_as_an_input(shared):
    shards(shared / "sh_outlink", n=1)
    victim = shared / "victim.npy"
    np.save(victim, np.ones((50, 4), np.float32))
    before = victim.read_bytes()
    (shared / "sh_outlink" / "e_1.npy").symlink_to(victim)
    fails_cleanly(["score", "sh_outlink", "-m", "random", "-o", "victim.npy"],
                  "is the command's input sh_outlink", f"which reads {victim}")
    fails_cleanly(["score", "sh_outlink/*.npy", "-m", "random", "-o", "victim.npy"], "victim.npy")
    assert victim.read_bytes() == before


@pytest.mark.parametrize("emb", ["clip/img_emb", "clip"])
def test_clip_retrieval_metadata_counts_as_an_input(shared, emb):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    shards(shared / "clip" / "img_emb", n=1)
    (shared / "clip" / "img_emb" / "e_0.npy").rename(shared / "clip" / "img_emb" / "img_emb_0.npy")
    meta = shared / "clip" / "metadata" / "metadata_0.parquet"
    meta.parent.mkdir()
    pq.write_table(pa.table({"image_path": [f"im{i}.jpg" for i in range(50)]}), meta)
    before = meta.read_bytes()
    fails_cleanly(["score", emb, "-m", "random", "-o", "clip/metadata/metadata_0.parquet"],
                  "is the command's input", "metadata_0.parquet")
    assert meta.read_bytes() == before


def test_the_target_of_a_link_inside_an_input_folder_counts_as_an_input(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "weights.bin"
    victim.write_bytes(PRECIOUS)
    (run / "sub").mkdir()
    (run / "sub" / "ema.bin").symlink_to(victim)
    with pytest.raises(pk.PrunekitError, match=r"is the command's input .*run \(through the link"):
        atomic.check_output(victim, input_dirs=[run])
    assert atomic.check_output(tmp_path / "other.bin", input_dirs=[run]) == tmp_path / "other.bin"


# -- the scan cache -----------------------------------------------------------------------------


def test_a_cache_file_that_is_a_link_is_ignored_and_left_alone(shared):
    parts = shards(shared / "sc")
    link = shared / "sc" / scan.CACHE_NAME
    link.symlink_to("../precious.txt")
    for _ in range(2):
        res = CliRunner().invoke(main, ["info", "sc", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["shape"] == [150, 4]
    assert (shared / "precious.txt").read_bytes() == PRECIOUS
    assert link.is_symlink() and os.readlink(link) == "../precious.txt"
    saved = list((shared / "xdg" / "prunekit").glob("*.json"))  # written where it is ours instead
    assert len(saved) == 1 and len(json.loads(saved[0].read_text())["entries"]) == len(parts)


def _rescanned(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = scan.scan_shard
    monkeypatch.setattr(scan, "scan_shard", lambda src, i, **kw: calls.append(i) or real(src, i, **kw))
    return calls


def test_edited_cache_entries_are_detected_and_recomputed(shared, monkeypatch):
    parts = shards(shared / "sc")
    parts[1][7, 2] = np.nan
    np.save(shared / "sc" / "e_1.npy", parts[1])
    first = pk.load_embeddings("sc", drop_nonfinite=True)
    assert first.nonfinite_rows.tolist() == [57]
    cache_file = shared / "sc" / scan.CACHE_NAME
    doc = json.loads(cache_file.read_text())
    doc["entries"][next(k for k in doc["entries"] if k.startswith("e_1.npy"))]["nonfinite"] = []
    doc["entries"][next(k for k in doc["entries"] if k.startswith("e_2.npy"))]["fingerprint"] = "0" * 32
    cache_file.write_text(json.dumps(doc))
    calls = _rescanned(monkeypatch)
    again = pk.load_embeddings("sc", drop_nonfinite=True)
    assert sorted(calls) == [1, 2]  # the two edited entries fail their MAC; e_0 is reused
    assert again.nonfinite_rows.tolist() == [57] and again.fingerprint == first.fingerprint
    res = CliRunner().invoke(main, ["info", "sc", "--json"])
    assert json.loads(res.stdout)["n_nonfinite"] == 1
    assert sorted(calls) == [1, 2]  # and the rewritten entries verify


def test_an_entry_with_a_valid_checksum_but_another_users_key_is_not_trusted(shared, monkeypatch):
    shards(shared / "sc")
    pk.load_embeddings("sc")
    monkeypatch.setattr(scan, "_SECRETS", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "other-user"))  # another key
    calls = _rescanned(monkeypatch)
    pk.load_embeddings("sc")
    assert sorted(calls) == [0, 1, 2]
    key = shared / "other-user" / "prunekit" / scan.KEY_NAME
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == scan.KEY_BYTES


def test_a_key_others_could_read_is_not_used(shared, monkeypatch):
    shards(shared / "sc")
    pk.load_embeddings("sc")
    (shared / "xdg" / "prunekit" / scan.KEY_NAME).chmod(0o644)
    monkeypatch.setattr(scan, "_SECRETS", {})
    calls = _rescanned(monkeypatch)
    for _ in range(2):
        pk.load_embeddings("sc")
    assert calls == [0, 1, 2, 0, 1, 2]  # nothing cached without a private key


@pytest.mark.parametrize("how", ["cp -p (new inode)", "rewritten in place, mtime restored"])
def test_a_shard_replaced_with_the_same_size_and_mtime_is_rescanned(shared, monkeypatch, how):
    parts = shards(shared / "sc")
    first = pk.load_embeddings("sc")
    shard = shared / "sc" / "e_1.npy"
    st = shard.stat()
    other = parts[1].copy()
    other[10, 0] += 1.0
    if how.startswith("cp"):
        np.save(shared / "new.npy", other)
        os.utime(shared / "new.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(shared / "new.npy", shard)
    else:
        with open(shard, "r+b") as fh:
            np.save(fh, other)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    calls = _rescanned(monkeypatch)
    again = pk.load_embeddings("sc")
    assert calls == [1] and again.fingerprint != first.fingerprint
    for i, a in enumerate([parts[0], other, parts[2]]):  # the same rows, scanned from scratch
        (shared / "fresh").mkdir(exist_ok=True)
        np.save(shared / "fresh" / f"e_{i}.npy", a)
    assert again.fingerprint == pk.load_embeddings(shared / "fresh").fingerprint


# -- HDF5 files that reach other files -----------------------------------------------------------


def crafted(d: Path) -> dict[str, Path]:
    """HDF5 embeddings whose data comes from elsewhere, and ones with dangling links."""
    secret = d / "secret.bin"
    secret.write_bytes(np.arange(32, dtype=np.float32).tobytes())
    with h5py.File(d / "target.h5", "w") as f:
        f["embeddings"] = np.full((8, 4), 2.0, np.float32)
    out = {}
    with h5py.File(d / "elink.h5", "w") as f:
        f["embeddings"] = h5py.ExternalLink("target.h5", "/embeddings")
    with h5py.File(d / "extstore.h5", "w") as f:
        f.create_dataset("embeddings", shape=(8, 4), dtype="f4", external=[(str(secret), 0, 128)])
    layout = h5py.VirtualLayout(shape=(8, 4), dtype="f4")
    layout[:] = h5py.VirtualSource("target.h5", "embeddings", shape=(8, 4))
    with h5py.File(d / "vds.h5", "w") as f:
        f.create_virtual_dataset("embeddings", layout)
    with h5py.File(d / "soft_missing.h5", "w") as f:
        f["x"] = np.zeros((8, 4), np.float32)
        f["embeddings"] = h5py.SoftLink("/nowhere")
    with h5py.File(d / "soft_loop.h5", "w") as f:
        f["embeddings"] = np.zeros((8, 4), np.float32)
        f["a"], f["b"] = h5py.SoftLink("/b"), h5py.SoftLink("/a")
    with h5py.File(d / "elink_missing.h5", "w") as f:
        f["x"] = np.zeros((8, 4), np.float32)
        f["embeddings"] = h5py.ExternalLink("absent.h5", "/embeddings")
    for name in ("elink", "extstore", "vds", "soft_missing", "soft_loop", "elink_missing"):
        out[name] = d / f"{name}.h5"
    return out


@pytest.mark.parametrize("name, words", [
    ("elink", ["'embeddings' is an external link to target.h5:/embeddings", "--allow-external"]),
    ("extstore", ["keeps its data in the external file(s)", "secret.bin", "--allow-external"]),
    ("vds", ["is a virtual dataset reading target.h5", "--allow-external"]),
    ("soft_missing", ["the link 'embeddings' points to /nowhere, which does not exist"]),
    ("soft_loop", ["the link 'a' points to /b, which does not exist (or links back to itself)"]),
    ("elink_missing", ["'embeddings' is an external link to absent.h5"]),
])
def test_hdf5_that_reaches_other_files_is_refused(shared, name, words):
    crafted(shared)
    for argv in (["info", f"{name}.h5"], ["score", f"{name}.h5", "-m", "kmeans", "--k", "2", "-o", "s.h5"],
                 ["plan", f"{name}.h5", "-m", "kmeans"],
                 ["select", "scores.h5", "--pr", "0.5", "--balance", "labels", "--labels-from",
                  f"{name}.h5", "-o", "s.h5"]):
        fails_cleanly(argv, *words)
    assert not (shared / "s.h5").exists()
    with pytest.raises(pk.PrunekitError, match="external|virtual|does not exist"):
        pk.load_embeddings(shared / f"{name}.h5")


def test_the_opt_in_reads_other_files_and_dangling_links_still_fail(shared):
    files = crafted(shared)
    want = np.arange(32, dtype=np.float32).reshape(8, 4)  # secret.bin, as float32 rows
    assert np.array_equal(pk.load_embeddings(files["extstore"], allow_external=True).array(), want)
    with pk.runtime(allow_external=True):
        assert np.array_equal(pk.load_embeddings(files["vds"]).array(), np.full((8, 4), 2.0))
        assert np.array_equal(pk.load_embeddings(files["elink"]).array(), np.full((8, 4), 2.0))
        with pytest.raises(pk.PrunekitError, match=r"points to absent\.h5:/embeddings, which does not exist"):
            pk.load_embeddings(files["elink_missing"])
    res = CliRunner().invoke(main, ["info", "extstore.h5", "--allow-external", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["norms"]["max"] == pytest.approx(float(np.linalg.norm(want[-1])))
    fails_cleanly(["info", "extstore.h5"], "external file")  # the opt-in lasted one command


def test_scores_and_selections_never_follow_external_data(shared):
    crafted(shared)
    with h5py.File("scores.h5", "a") as f:
        del f["score"]
        f["score"] = h5py.ExternalLink("target.h5", "/embeddings")
    fails_cleanly(["select", "scores.h5", "--pr", "0.5", "-o", "s.h5"],
                  "scores file scores.h5: 'score' is an external link", "rewrite it")
    fails_cleanly(["select", "scores.h5", "--pr", "0.5", "-o", "s.h5", "--allow-external"], "external link")
    with h5py.File("sel.h5", "a") as f:
        f.create_dataset("extra", shape=(4,), dtype="f4", external=[("secret.bin", 0, 16)])
    fails_cleanly(["export", "sel.h5", "--format", "json", "-o", "s.json"], "secret.bin")


# -- shards reached twice -----------------------------------------------------------------------


def test_a_glob_through_symlink_loops_reads_each_shard_once(tmp_path):
    d = tmp_path / "loop"
    parts = shards(d / "a", n=2)
    (d / "a" / "up").symlink_to("..")
    (d / "a" / "b").symlink_to("../a")  # two loops: a plain glob would enumerate 2**40 paths
    code = ("import os, prunekit as pk; s = pk.load_embeddings('loop/**/*.npy').reader; "
            "print(s.n_total, [os.path.relpath(sh.path) for sh in s.shards])")  # stored absolute
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split(" ", 1)[0] == str(sum(len(p) for p in parts))
    assert "['loop/a/e_0.npy', 'loop/a/e_1.npy']" in res.stdout


def test_two_links_to_one_shard_in_a_folder_read_it_once(tmp_path):
    parts = shards(tmp_path / "d", n=2)
    (tmp_path / "d" / "e_2.npy").symlink_to("e_1.npy")
    emb = pk.load_embeddings(tmp_path / "d")
    assert emb.n_total == 100 and np.array_equal(emb.array(), np.concatenate(parts))
    assert [Path(p).name for p in emb.reader.files()] == ["e_0.npy", "e_1.npy"]
