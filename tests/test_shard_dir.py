"""The core's writer of shard folders: all or nothing, and only an earlier output replaced."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from prunekit.errors import PrunekitError
from prunekit.io import atomic
from prunekit.io.atomic import TMP_PREFIX, make_dirs, temp_name, temp_pid
from prunekit.io.shard_dir import (
    atomic_dir,
    check_shard_dir,
    is_shard_output,
    remove_stale_dirs,
    shard_name,
    shard_ranges,
)


def _shard(path, rows=2, params=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=np.zeros((rows, 3), np.float32))
        f.attrs["params"] = json.dumps({"shard_rows": rows} if params is None else params)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_shard_names_and_ranges():
    assert [shard_name(i) for i in (0, 7, 123456)] == ["part_00000.h5", "part_00007.h5",
                                                        "part_123456.h5"]
    assert shard_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert shard_ranges(6, 3) == [(0, 3), (3, 6)] and shard_ranges(0, 3) == []
    with pytest.raises(PrunekitError, match="--shard-rows must be >= 1 "):
        shard_ranges(5, 0)


def test_temp_names_carry_this_pid():
    p = temp_name("/some/dir")
    assert p.parent == pathlib.Path("/some/dir") and p.name.startswith(TMP_PREFIX)
    assert temp_pid(p.name) == os.getpid() and temp_name("/some/dir") != p
    assert temp_pid("part_00000.h5") is None and temp_pid(f"{TMP_PREFIX}abc.12") is None


def test_a_written_folder_appears_whole_with_its_parents(tmp_path):
    out = tmp_path / "a" / "b" / "emb"
    with atomic_dir(check_shard_dir(out)) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(TMP_PREFIX)
        assert not out.exists()
        for i in range(2):
            _shard(tmp / shard_name(i))
    assert sorted(p.name for p in out.iterdir()) == ["part_00000.h5", "part_00001.h5"]
    assert [p.name for p in out.parent.iterdir()] == ["emb"]  # no temporary folder left
    assert is_shard_output(out)


def test_a_failed_write_leaves_nothing_and_an_earlier_output_as_it_was(tmp_path):
    out = tmp_path / "new" / "emb"
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        _shard(tmp / shard_name(0))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # the parent it made is gone too
    old = tmp_path / "old"
    with atomic_dir(old) as tmp:
        _shard(tmp / shard_name(0), rows=5)
    with pytest.raises(PrunekitError, match="disk full"), atomic_dir(check_shard_dir(old)) as tmp:
        _shard(tmp / shard_name(0), rows=1)
        raise PrunekitError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    with h5py.File(old / shard_name(0)) as f:
        assert f["embeddings"].shape == (5, 3)


def test_an_earlier_output_is_replaced_whole(tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    for i in range(3):
        _shard(out / shard_name(i))
    with atomic_dir(check_shard_dir(out)) as tmp:
        _shard(tmp / shard_name(0), rows=6)
    assert [p.name for p in out.iterdir()] == ["part_00000.h5"]  # no stale part_00002
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]  # the old one, set aside, is gone


@pytest.mark.parametrize("plant, held", [
    (lambda d: (d / "notes.txt").write_text("mine"), "'notes.txt' and 1 more"),
    (lambda d: _shard(d / shard_name(2)), "'part_00000.h5' and 1 more"),  # a gap: 0 and 2
    (lambda d: _shard(d / shard_name(1), params={"k": 3}), "'part_00000.h5' and 1 more"),
    (lambda d: (d / shard_name(1)).symlink_to(d / shard_name(0)), "'part_00000.h5' and 1 more"),
    (lambda d: (d / shard_name(1)).write_bytes(b"not hdf5"), "'part_00000.h5' and 1 more"),
])
def test_any_other_folder_is_refused_and_kept(tmp_path, plant, held):
    out = tmp_path / "emb"
    out.mkdir()
    _shard(out / shard_name(0))
    plant(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(PrunekitError, match=f"--output {out} is a non-empty directory "
                                            rf"\(it holds {held}\) but not a complete earlier"):
        check_shard_dir(out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_file_or_a_folder_holding_an_input_is_refused(tmp_path):
    (tmp_path / "emb.h5").write_bytes(b"x")
    with pytest.raises(PrunekitError, match="emb.h5 is not a directory; with --shard-rows"):
        check_shard_dir(tmp_path / "emb.h5")
    (tmp_path / "images").mkdir()
    with pytest.raises(PrunekitError, match=f"holds {tmp_path / 'images'}, which this command reads"):
        check_shard_dir(tmp_path, input_dirs=[tmp_path / "images"])


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = temp_name(tmp_path, dead)
    running = temp_name(tmp_path, live)
    for d in (stale, running):
        d.mkdir()
        (d / shard_name(0)).write_bytes(b"half")
    (tmp_path / f"{TMP_PREFIX}{dead}.cc").write_bytes(b"a file: atomic.py's to remove")
    (tmp_path / f"{TMP_PREFIX}{dead}.dd").symlink_to(running)  # a link is never followed
    assert remove_stale_dirs(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, f"{TMP_PREFIX}{dead}.cc", f"{TMP_PREFIX}{dead}.dd"])
    assert (running / shard_name(0)).read_bytes() == b"half"
    with atomic_dir(tmp_path / "emb") as tmp:  # a write in the same parent removes them too
        _shard(tmp / shard_name(0))
    assert not stale.exists() and running.exists()


def test_make_dirs_removes_what_it_made_when_a_level_fails(tmp_path, monkeypatch):
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "c":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(PrunekitError, match="cannot create directory .*c: No space left"):
        make_dirs(tmp_path / "a" / "b" / "c" / "d")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    made = make_dirs(tmp_path / "a" / "b")
    assert made == [tmp_path / "a", tmp_path / "a" / "b"] and (tmp_path / "a" / "b").is_dir()
    atomic.remove_dirs(made)
    assert list(tmp_path.iterdir()) == []
