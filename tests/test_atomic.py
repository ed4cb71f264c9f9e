"""Output paths and atomic writes: what check_output refuses, symlinks never written through,
stale temporary files, interrupts; the memory check and the seed rule."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from prunekit import PrunekitError
from prunekit.io.atomic import (
    TMP_PREFIX,
    atomic_path,
    check_output,
    host_tag,
    interrupts_deferred,
    temp_name,
    write_text,
)
from prunekit.io.h5io import atomic_h5
from prunekit.runtime.memory import check_fits, human
from prunekit.seeds import SEED_MAX, check_seed, role_rng, role_seed


def test_check_output_accepts_new_and_regular_files(tmp_path):
    assert check_output(tmp_path / "new.h5") == tmp_path / "new.h5"
    (tmp_path / "old.h5").write_text("x")
    assert check_output(tmp_path / "old.h5", inputs=[tmp_path / "other.h5"]) == tmp_path / "old.h5"
    assert check_output(tmp_path / "a" / "b" / "deep.h5") == tmp_path / "a" / "b" / "deep.h5"
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_check_output_refuses_inputs_and_files_inside_input_dirs(tmp_path):
    src = tmp_path / "emb.h5"
    src.write_text("data")
    with pytest.raises(PrunekitError, match="is the command's input"):
        check_output(src, inputs=[src])
    link = tmp_path / "link.h5"
    link.symlink_to(src)
    with pytest.raises(PrunekitError, match="link.h5 is a symbolic link to .*emb.h5"):
        check_output(link, inputs=[src])  # an output is never a link
    with pytest.raises(PrunekitError, match="is the command's input"):
        check_output(src, inputs=[link])  # inputs are resolved after symlinks
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(PrunekitError, match="lies inside"):
        check_output(run / "ema.safetensors", input_dirs=[run])
    assert src.read_text() == "data"


def test_check_output_refuses_special_files_and_bad_parents(tmp_path):
    with pytest.raises(PrunekitError, match="is a directory"):
        check_output(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PrunekitError, match="special file"):
        check_output(fifo)
    with pytest.raises(PrunekitError, match="special file"):
        check_output("/dev/null")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrunekitError, match="is not a directory"):
        check_output(tmp_path / "file" / "out.h5")
    with pytest.raises(PrunekitError, match="longer than 255 bytes"):
        check_output(tmp_path / ("a" * 256 + ".h5"))
    with pytest.raises(PrunekitError, match="longer than 4096 bytes"):
        check_output(tmp_path / "/".join(["d" * 200] * 25) / "x.h5")
    for empty in ("", ".", "a/.."):
        with pytest.raises(PrunekitError, match="names no file"):
            check_output(empty)


def test_standard_output_only_where_allowed():
    for name in ("-", "/dev/stdout"):
        with pytest.raises(PrunekitError, match="cannot be standard output"):
            check_output(name)
        assert str(check_output(name, allow_stdout=True)) == name


def test_a_symlink_is_never_written_through(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    for write in (lambda: write_text(link, "new"), lambda: check_output(link)):
        with pytest.raises(PrunekitError, match=r"link.txt is a symbolic link to .*real.txt; .*"
                                                r"Pass the target path itself"):
            write()
    assert link.is_symlink() and target.read_text() == "old"
    write_text(target, "new")  # the target itself, named, is an ordinary output
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt"]


def test_stale_temp_files_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = temp_name(tmp_path, int(dead.stdout))
    live = temp_name(tmp_path, os.getppid())
    other = tmp_path / ".other.tmp"
    # A dead pid on another machine of a shared folder: that machine's to clean, not ours.
    elsewhere = tmp_path / f"{TMP_PREFIX}{dead.stdout.strip()}.0badc0de.0123456789abcdef"
    assert elsewhere.name.split(".")[3] != host_tag()
    for p in (stale, live, other, elsewhere):
        p.write_text("partial")
    write_text(tmp_path / "out.txt", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, elsewhere.name, "out.txt"])


def test_a_sigkilled_write_leaves_a_temp_file_that_the_next_run_removes(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from prunekit.io.atomic import atomic_path
        with atomic_path({str(tmp_path / "out.h5")!r}) as tmp:
            tmp.write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(TMP_PREFIX)  # SIGKILL runs no cleanup
    write_text(tmp_path / "next.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["next.txt"]


def test_failed_write_removes_the_directories_it_created(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, mode=0o777):
        if os.path.basename(path).startswith(TMP_PREFIX):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PrunekitError, match="Read-only file system"):
        write_text(tmp_path / "a" / "b" / "out.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_is_held_until_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    with interrupts_deferred():
        pass  # no signal: nothing raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_an_hdf5_file_is_written_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        with atomic_h5(target) as f:
            f.create_dataset("x", data=np.arange(10))
            os.kill(os.getpid(), signal.SIGINT)
            f.create_dataset("y", data=np.arange(5))  # held: the interrupt comes after the close
    assert list(tmp_path.iterdir()) == []
    with atomic_h5(target) as f:  # and the next write works
        f.create_dataset("x", data=np.arange(3))
    with h5py.File(target) as f:
        assert f["x"][()].tolist() == [0, 1, 2]


def test_atomic_path_removes_the_temp_file_on_any_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "sub" / "x.bin") as tmp:
            tmp.write_bytes(b"abc")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_check_fits_names_both_sizes():
    check_fits(1000, "a small array", budget=1000)
    with pytest.raises(PrunekitError, match=r"a big array needs 1\.0 GiB of memory but only 1\.0 MiB"):
        check_fits(2**30, "a big array", budget=2**20)
    assert (human(512), human(1536), human(3 * 2**40)) == ("512 B", "1.5 KiB", "3.0 TiB")


def test_memory_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_AVAILABLE_MEMORY", "1000")
    with pytest.raises(PrunekitError, match="only 800 B"):
        check_fits(801, "x")
    check_fits(800, "x")
    monkeypatch.setenv("PRUNEKIT_AVAILABLE_MEMORY", "lots")
    with pytest.raises(PrunekitError, match="not a number of bytes"):
        check_fits(1, "x")


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "3", True, None])
def test_one_seed_rule(bad):
    with pytest.raises(PrunekitError, match=r"seed must"):
        check_seed(bad)


def test_seeds_in_range_and_role_streams():
    assert check_seed(0) == 0 and check_seed(SEED_MAX) == 2**63 - 1 and check_seed(np.int64(5)) == 5
    a = role_rng(7, "means").standard_normal(4)
    assert np.array_equal(a, role_rng(7, "means").standard_normal(4))  # reproducible
    assert not np.allclose(a, role_rng(7, "sources").standard_normal(4))  # roles differ
    assert not np.allclose(a, np.random.default_rng(7).standard_normal(4))  # not the plain seed
    assert not np.allclose(a, role_rng(8, "means").standard_normal(4))
    assert role_seed(7, "x") == role_seed(7, "x") != role_seed(7, "y")
    assert 0 <= role_seed(SEED_MAX, "x") <= SEED_MAX
