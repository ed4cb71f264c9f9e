"""Private scratch folders (``prunekit.runtime.scratch``): where, how private, how long."""

from __future__ import annotations

import gc
import os
import stat
import tempfile

import pytest

import prunekit as pk
from prunekit.runtime.resume import WorkDir
from prunekit.runtime.scratch import private_subfolder, scratch_folder


class Boom(Exception):
    pass


class Owner:
    """Something a caller returns that reads files in the folder (weak-referenceable)."""


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """TMPDIR for this test only, to see what is left in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ------------------------------------------------------------------- no work directory


@pytest.mark.parametrize("resume", [False, True])
def test_without_a_work_dir_a_private_temp_folder_is_removed_at_the_end(tmp, resume):
    with scratch_folder("join", resume=resume) as folder:
        assert folder.parent == tmp and folder.name.startswith("prunekit-join-")
        assert mode(folder) == 0o700
        (folder / "piece").write_bytes(b"x")
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("resume", [False, True])
def test_without_a_work_dir_an_error_removes_the_folder(tmp, resume):
    with pytest.raises(Boom), scratch_folder("ids", resume=resume) as folder:
        (folder / "piece").write_bytes(b"x")
        raise Boom
    assert list(tmp.iterdir()) == []


def test_remove_with_keeps_the_folder_until_its_owner_is_dropped(tmp):
    scratch = scratch_folder("groups", resume=True)
    with scratch as folder:
        (folder / "rows").write_bytes(b"x")
        owner = Owner()
        scratch.remove_with(owner)
    assert (folder / "rows").read_bytes() == b"x"  # the caller still reads it
    del owner
    gc.collect()
    assert list(tmp.iterdir()) == []


def test_remove_with_does_not_delay_the_removal_on_an_error(tmp):
    scratch = scratch_folder("groups", resume=True)
    owner = Owner()
    with pytest.raises(Boom), scratch:
        scratch.remove_with(owner)
        raise Boom
    assert list(tmp.iterdir()) == [] and owner is not None


# ---------------------------------------------------------------------- a work directory


def test_in_a_work_dir_the_folder_is_private_inside_it_and_removed(tmp, tmp_path):
    work = tmp_path / "out" / ".prunekit-work" / "scores.abc"
    with pk.runtime(work_dir=work), scratch_folder("loss-join") as folder:
        assert folder == work / "scratch" / "loss-join"
        assert {mode(p) for p in (work, work / "scratch", folder)} == {0o700}
        (folder / "piece").write_bytes(b"x")
    assert not folder.exists() and (work / "scratch").is_dir()
    assert list(tmp.iterdir()) == []  # nothing in TMPDIR


def test_in_a_work_dir_a_crashed_runs_leftovers_are_cleared_first(tmp_path):
    work = WorkDir(tmp_path / "w")
    with pk.runtime(work_dir=work):
        with pytest.raises(Boom), scratch_folder("semdedup") as folder:
            (folder / "kmeans").mkdir()
            raise Boom
        assert not folder.exists()  # an error removes it too
        left = tmp_path / "w" / "scratch" / "semdedup"  # a killed run's (no __exit__)
        left.mkdir()
        (left / "kmeans").mkdir()
        (left / "kmeans" / "part_00000.parquet").write_bytes(b"half")
        with scratch_folder("semdedup") as folder:
            assert folder == left and list(folder.iterdir()) == []
            assert mode(folder) == 0o700


def test_in_a_work_dir_resume_keeps_the_files_and_leaves_the_folder(tmp_path):
    work = WorkDir(tmp_path / "w")
    owner = Owner()
    with pk.runtime(work_dir=work):
        scratch = scratch_folder("groups", resume=True)
        with pytest.raises(Boom), scratch as folder:
            (folder / "rows").write_bytes(b"kept")
            scratch.remove_with(owner)
            raise Boom  # a failed run: its files are the resume point
        with scratch_folder("groups", resume=True) as again:
            assert again == folder and (again / "rows").read_bytes() == b"kept"
    del owner
    gc.collect()
    assert (folder / "rows").read_bytes() == b"kept"  # goes with the work directory


@pytest.mark.parametrize("resume", [False, True])
def test_a_planted_link_in_the_work_dir_is_refused_and_not_followed(tmp_path, resume):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("keep me")
    (tmp_path / "w" / "scratch").mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "w", 0o700)
    link = tmp_path / "w" / "scratch" / "join"
    link.symlink_to(victim)
    with pk.runtime(work_dir=tmp_path / "w"), pytest.raises(pk.PrunekitError) as err, \
            scratch_folder("join", resume=resume):
        pass
    assert f"the work directory {link} is a symbolic link" in str(err.value)
    assert (victim / "data").read_text() == "keep me" and link.is_symlink()


def test_names_are_one_path_component():
    for bad in ("", ".", "..", "a/b", "../up"):
        with pytest.raises(ValueError, match="one path component"):
            scratch_folder(bad)


def test_private_subfolder_is_made_0700_kept_when_there_and_refused_when_open(tmp_path):
    sub = private_subfolder(tmp_path, "pieces")
    assert sub == tmp_path / "pieces" and mode(sub) == 0o700
    (sub / "piece-00000001").write_bytes(b"x")
    assert private_subfolder(tmp_path, "pieces") == sub and list(sub.iterdir()) != []
    os.chmod(sub, 0o777)
    with pytest.raises(pk.PrunekitError, match="is writable by other users"):
        private_subfolder(tmp_path, "pieces")
