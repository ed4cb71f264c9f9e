"""Running ``prunekit`` as two CPU processes under torchrun, robustly, for the DDP tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest


def run_two_processes(args: list[str], *, before_try: Callable[[], None] = lambda: None,
                      timeout: float = 150) -> tuple[int, str, str]:
    """``torchrun --standalone --nproc_per_node 2 -m prunekit ARGS``: (returncode, stdout, stderr).

    A rendezvous port taken by another process can stall gloo: after ``timeout`` seconds the
    whole process group (torchrun and both workers) is killed and the run tried once more,
    after ``before_try()`` has cleaned what the first try left.
    """
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:  # pragma: no cover - torchrun ships with torch
        pytest.fail("torchrun not found beside the Python interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        before_try()
        proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "prunekit",
                                 *args], env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            return proc.returncode, stdout, stderr
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if attempt == 1:
                raise
    raise AssertionError("unreachable")
