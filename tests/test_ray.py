"""The Ray engine on a 2-CPU local cluster: same bytes as the local engine, retries, failures;
a local cluster listens on loopback only; a two-node cluster with token authentication.

One cluster for the whole module (starting Ray takes seconds); skipped without Ray.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.compute import grouping
from prunekit.runtime import engine as engine_mod
from prunekit.runtime.engine import LocalEngine, RayEngine

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    with engine_mod._loopback_node():  # as RayEngine starts one: on 127.0.0.1 only
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address=engine_mod.LOOPBACK)
    yield
    ray.shutdown()


@pytest.fixture
def shards(tmp_path, monkeypatch):
    """Two .npy shards (float16) that the workers open themselves; chunks of 64 rows."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * 8)
    monkeypatch.setattr(grouping, "BATCH_ROWS", 150)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 8)) * 3
    x = (centres[rng.integers(0, 5, 1300)] + rng.standard_normal((1300, 8))).astype(np.float16)
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "part_0.npy", x[:700])
    np.save(d / "part_1.npy", x[700:])
    return d


def run_all(emb, fn):
    out = []
    for eng in (LocalEngine(2), RayEngine(1), RayEngine(2)):
        with pk.runtime(engine=eng):
            out.append(fn())
    return out


def test_kmeans_and_within_same_bytes_local_ray1_ray2(shards):
    emb = pk.load_embeddings(shards)
    kms = run_all(emb, lambda: pk.score(emb, "kmeans", k=5, sample=500, full_passes=2,
                                        seed=3, progress=False))
    for other in kms[1:]:
        for name in ("score", "cluster", "centroids", "centroid_distance"):
            assert getattr(other, name).tobytes() == getattr(kms[0], name).tobytes(), name
    herds = run_all(emb, lambda: pk.score(emb, "herding", within=kms[0], max_keep=40,
                                          progress=False))
    for other in herds[1:]:
        assert other.order.tobytes() == herds[0].order.tobytes()
        assert other.score.tobytes() == herds[0].score.tobytes()
    assert herds[0].order.size == 5 * 40


def test_cli_ray_engine_writes_the_local_arrays(shards, tmp_path):
    # The full pass: 21 one-chunk groups whose Ray tasks record their sums in the CLI's work
    # directory, added up by the tree in tasks.
    runner = CliRunner()
    outs = {}
    for name, extra in (("local", []), ("ray", ["--engine", "ray", "--workers", "2"])):
        out = tmp_path / f"{name}.h5"
        r = runner.invoke(main, ["score", str(shards), "-m", "kmeans", "--k", "4", "--sample",
                                 "400", "--full-passes", "1", "-o", str(out), "-q", *extra])
        assert r.exit_code == 0, r.output
        with h5py.File(out) as f:
            outs[name] = {k: f[k][()].tobytes() for k in ("score", "cluster", "centroids")}
    assert outs["ray"] == outs["local"]


def die_once(marker, item):
    """Kills its worker process the first time it runs (a crashed machine), then works."""
    if item == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return item * 10


def always_die(shared, item):
    os._exit(1)


def user_error(shared, item):
    raise pk.PrunekitError(f"shard {item} is broken")


def test_dead_worker_is_retried(tmp_path):
    eng = RayEngine(2)
    marker = str(tmp_path / "died")
    assert list(eng.map(die_once, range(4), marker, progress=False)) == [0, 10, 20, 30]
    assert os.path.exists(marker)


def slow_or_broken(marker, item):
    """Item 0 fails at once; the others take a while, then leave a file (they ran to the end)."""
    if item == 0:
        raise pk.PrunekitError("shard 0 is broken")
    time.sleep(0.5)
    open(f"{marker}-{item}", "w").close()
    return item


def test_failures_become_clean_errors(monkeypatch, tmp_path):
    with pytest.raises(pk.PrunekitError, match="shard 1 is broken"):
        list(RayEngine(2).map(user_error, [1, 2], progress=False))
    # A failure waits for the calls in flight instead of cancelling them (a cancel racing a
    # call's completion can abort Ray's driver): none is cancelled, none runs afterwards.
    cancelled = []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: cancelled.append(ref))
    marker = str(tmp_path / "done")
    with pytest.raises(pk.PrunekitError, match="shard 0 is broken"):
        with RayEngine(2).map(slow_or_broken, range(8), marker, progress=False) as results:
            list(results)
    done = sorted(os.listdir(tmp_path))
    assert cancelled == [] and done == ["done-1"]  # the window: items 0 and 1 on two CPUs
    time.sleep(1.0)
    assert sorted(os.listdir(tmp_path)) == done
    monkeypatch.setattr(engine_mod, "RAY_MAX_RETRIES", 0)
    with pytest.raises(pk.PrunekitError, match="could not finish after 0 retries"):
        list(RayEngine(1).map(always_die, [1], progress=False))


def leaf(shared, item):
    if item == shared:
        raise pk.PrunekitError(f"leaf {item} is broken")
    return str(item)


def bracket(parts):
    return "(" + " ".join(parts) + ")"


def test_sample_put_once_and_sums_added_by_a_tree_of_tasks(monkeypatch):
    from prunekit.compute import cluster
    from prunekit.compute.cluster import FitSample

    eng = RayEngine(2)
    assert eng.reduce(leaf, range(10), -1, combine=bracket, fan_in=3,
                      progress=False) == "(((0 1 2) (3 4 5) (6 7 8)) ((9)))"
    with pytest.raises(pk.PrunekitError, match="leaf 4 is broken"):
        eng.reduce(leaf, range(10), 4, combine=bracket, fan_in=3, progress=False)
    # 12 chunks of 128 rows, their sums added by tasks (12 -> 2 -> 1): the local bytes, and
    # the in-memory sample put into the object store once for two restarts' maps.
    monkeypatch.setattr(cluster, "FIT_CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(cluster, "FIT_MIN_CHUNK_ROWS", 128)
    monkeypatch.setattr(cluster, "LLOYD_FLAT_BYTES", 0)
    x = np.random.default_rng(2).standard_normal((1500, 8)).astype(np.float32)
    kw = dict(seed=1, spherical=False, restarts=2, iters=3, progress=False)
    local = pk.compute.cluster.kmeans(x, 6, engine=LocalEngine(1), **kw)
    puts, real_put = [], ray.put
    monkeypatch.setattr(ray, "put", lambda obj, **opt: puts.append(obj) or real_put(obj, **opt))
    far = pk.compute.cluster.kmeans(x, 6, engine=eng, **kw)
    assert sum(isinstance(obj, FitSample) for obj in puts) == 1 and len(puts) > 10
    assert not any(isinstance(e, FitSample) for obj in puts if isinstance(obj, tuple)
                   for e in obj)  # every map's shared tuple holds the handle only
    for name in ("centroids", "labels", "distance"):
        assert getattr(far, name).tobytes() == getattr(local, name).tobytes(), name


# ------------------------------------------------------------- listeners and a two-node cluster

LOOPBACK_ADDRESSES = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def process_tree(roots: set[int]) -> set[int]:
    """``roots`` and every process below them (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def listeners(pids: set[int]) -> list[tuple[str, str]]:
    """``(local address, process)`` of every listening TCP socket of ``pids`` (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append((line.split()[3].rpartition(":")[0], line.split('"')[1]))
    return found


LISTENERS_OF_A_LOCAL_CLUSTER = """
import json, os, sys
sys.path.insert(0, {tests!r})
from test_ray import listeners, process_tree
from prunekit.runtime.engine import RayEngine
eng = RayEngine(2, quiet=True)
assert list(eng.map(pow, [2, 3], 2, progress=False)) == [4, 8]  # workers started
print(json.dumps(listeners(process_tree({{os.getpid()}}))))
eng.close()
"""


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listeners")
def test_a_local_cluster_listens_on_loopback_only(tmp_path):
    """``--engine ray`` without an address: GCS, raylet, object manager and every worker of
    the cluster it starts listen on 127.0.0.1, none on 0.0.0.0, :: or a network address."""
    script = LISTENERS_OF_A_LOCAL_CLUSTER.format(tests=os.path.dirname(__file__))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout.splitlines()[-1])
    names = {name for _, name in found}
    assert {"gcs_server", "raylet"} <= names, found
    assert [a for a, _ in found if a not in LOOPBACK_ADDRESSES] == [], found
    assert res.stderr == ""  # quiet: not even Ray's token notice


# ``ray start`` for a node on 127.0.0.1: Ray swaps a loopback --node-ip-address for the
# machine's network address (and then listens everywhere), and refuses its one-machine mode
# on a second node; keeping the address as given is what RayEngine does for a local cluster.
RAY_START = ("import sys; import ray._private.services as s; "
             "s.resolve_ip_for_localhost = lambda host: host; "
             "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())")

NODES_AND_TASKS = """
import json, sys, time
import ray
from prunekit.runtime.engine import RayEngine

def node_of(shared, item):
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id()

eng = RayEngine(address=sys.argv[1], quiet=True)
alive = [n for n in ray.nodes() if n["Alive"]]
used = set(eng.map(node_of, range(4), progress=False))
print(json.dumps({"nodes": sorted(n["NodeManagerAddress"] for n in alive), "used": len(used)}))
eng.close()
"""


def token_auth_supported() -> bool:
    try:
        import ray._private.authentication  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def two_nodes():
    """A head and a second node (1 CPU each) on 127.0.0.1 with a fresh token; yields
    ``(address, env)``. Torn down by killing exactly its processes: ``ray stop --force``
    would stop every Ray cluster of this user on the machine, other jobs' too."""
    temp = tempfile.mkdtemp(prefix="pkray", dir="/tmp")  # Ray's socket paths must stay short
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "PRUNEKIT_MEMORY"))}
    if token_auth_supported():
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
              "--temp-dir", temp]
    try:
        for args in (["--head", "--port", str(port), "--include-dashboard", "false"],
                     ["--address", f"127.0.0.1:{port}"]):
            res = subprocess.run([sys.executable, "-c", RAY_START, "start", *args, *common],
                                 env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stdout + res.stderr
        yield f"127.0.0.1:{port}", env, temp
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def cluster_pids(temp: str) -> set[int]:
    """The processes of the cluster whose temp dir is ``temp``, and their children."""
    roots = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if temp.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                    roots.add(int(entry))
            except OSError:
                continue
    return process_tree(roots) if roots else set()


def stop_cluster(temp: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_pids(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while cluster_pids(temp) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not cluster_pids(temp):
            return


@pytest.mark.slow
def test_two_nodes_on_loopback_with_a_token_write_the_local_bytes(two_nodes, tmp_path):
    """``--ray-address`` on a head plus a second node joined with ``ray start --address``:
    both nodes take tasks, every listener is on 127.0.0.1, a driver with a wrong token is
    turned away, and k-means (streamed passes) and herding ``--within`` write the same
    arrays as the local engine."""
    address, env, temp = two_nodes
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 8))[rng.integers(0, 5, 3000)] * 3
         + rng.standard_normal((3000, 8))).astype(np.float32)
    data = tmp_path / "emb"
    data.mkdir()
    for i in range(6):  # one chunk per shard: six chunk tasks per pass
        np.save(data / f"part_{i}.npy", x[i * 500 : (i + 1) * 500])
    probe = subprocess.run([sys.executable, "-c", NODES_AND_TASKS, address], env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.splitlines()[-1])
    assert seen == {"nodes": ["127.0.0.1", "127.0.0.1"], "used": 2}
    if shutil.which("ss"):
        found = listeners(cluster_pids(temp))
        assert found and [a for a, _ in found if a not in LOOPBACK_ADDRESSES] == [], found
    bad = None  # a driver with a wrong token, alongside the runs below (Ray retries ~20 s)
    if "RAY_AUTH_TOKEN" in env:
        bad = subprocess.Popen([sys.executable, "-m", "prunekit", "score", str(data), "-m",
                                "random", "--engine", "ray", "--ray-address", address, "-o",
                                "bad.h5", "-q"], env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        files = {}
        for name, engine in (("local", []), ("ray", ["--engine", "ray", "--ray-address", address])):
            d = tmp_path / name
            d.mkdir()
            for args in (["-m", "kmeans", "--k", "5", "--sample", "1000", "--full-passes", "1",
                          "--seed", "3", "-o", "km.h5"],
                         ["-m", "herding", "--within", "km.h5", "--max-keep", "40", "-o", "h.h5"]):
                # The shards by absolute path: Ray workers do not run in the driver's folder.
                res = subprocess.run([sys.executable, "-m", "prunekit", "score", str(data), *args,
                                      *engine, "-q"], env=env, cwd=d, capture_output=True,
                                     text=True, timeout=120)
                assert res.returncode == 0, res.stderr
            files[name] = {f: _arrays_and_params(d / f) for f in ("km.h5", "h.h5")}
        assert files["ray"] == files["local"]
        assert files["local"]["h.h5"]["order"][1] == (5 * 40,)
        if bad is not None:  # refused: exit 2, the error names the token variables, no file
            _, err = bad.communicate(timeout=120)
            assert bad.returncode == 2 and "cannot join the Ray cluster" in err
            assert "RAY_AUTH_TOKEN" in err and not (tmp_path / "bad.h5").exists()
    finally:  # never leave the refused driver behind
        if bad is not None and bad.poll() is None:
            bad.kill()
            bad.wait()


def _arrays_and_params(path) -> dict:
    with h5py.File(path) as f:
        out = {k: (f[k].dtype.str, f[k].shape, f[k][()].tobytes()) for k in f}
        out["params"] = f.attrs["params"]
    return out
