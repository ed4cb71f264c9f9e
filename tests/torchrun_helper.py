"""Running ``prunekit`` as two CPU processes under torchrun, robustly, for the DDP tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own,
    so killing torchrun's process group does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(pid: int) -> None:
    for p in [*_descendants(pid), pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_two_processes(args: list[str], *, before_try: Callable[[], None] = lambda: None,
                      timeout: float = 150) -> tuple[int, str, str]:
    """``torchrun --standalone --nproc_per_node 2 -m prunekit ARGS``: (returncode, stdout, stderr).

    A stalled run is killed with all its workers after ``timeout`` seconds and tried once
    more, after ``before_try()`` has cleaned what the first try left. Output goes through
    files, so a worker that outlives torchrun cannot hold the test on an open pipe.
    """
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:  # pragma: no cover - torchrun ships with torch
        pytest.fail("torchrun not found beside the Python interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        before_try()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                                     "prunekit", *args], env=env, text=True, stdout=out, stderr=err)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.wait()
                if attempt == 1:
                    raise
                continue
            out.seek(0)
            err.seek(0)
            return code, out.read(), err.read()
    raise AssertionError("unreachable")
