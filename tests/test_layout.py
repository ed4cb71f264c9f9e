"""The core's package layout: old flat module paths still import, with a warning."""

import importlib
import subprocess
import sys

import pytest

from prunekit._compat import MOVED


def test_every_old_module_path_warns_and_names_its_new_home():
    # A fresh interpreter: each alias must warn on its first import.
    code = (
        "import importlib, warnings\n"
        "import prunekit\n"
        "from prunekit._compat import MOVED\n"
        "for old in sorted(MOVED):\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        warnings.simplefilter('always')\n"
        "        mod = importlib.import_module('prunekit.' + old)\n"
        "    print(old, mod.__name__, [str(w.message) for w in seen\n"
        "                              if w.category is DeprecationWarning])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(MOVED)
    for line, old in zip(lines, sorted(MOVED), strict=True):
        name, module, warned = line.split(" ", 2)
        assert (name, module) == (old, MOVED[old])
        assert f"prunekit.{old} moved to {MOVED[old]}" in warned


def test_alias_shares_the_module_object_and_keeps_its_spec():
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("prunekit.quotas") if "prunekit.quotas" not in sys.modules \
            else pytest.skip("already imported in this process")
    new = importlib.import_module("prunekit.selection.quotas")
    assert old is new
    assert new.__spec__.name == "prunekit.selection.quotas"


def test_selection_package_keeps_the_old_module_names():
    from prunekit.selection import Selection, load_selection, resolve_rows, select
    from prunekit.selection.subset import Selection as S2

    assert Selection is S2 and callable(load_selection) and callable(resolve_rows)
    assert callable(select)


def test_importing_the_cli_loads_no_library_module():
    # The CLI's Ctrl-C handler is in place only once main() runs: what comes before it (the
    # import) must stay small, so the public names of prunekit load on first use.
    code = ("import sys, prunekit.cli, prunekit\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('h5py', 'numpy', 'faiss', 'sklearn', 'scipy')\n"
            "      or m.startswith(('prunekit.selection', 'prunekit.methods', 'prunekit.io.'))))\n"
            "import prunekit.runtime.engine\n"
            "print(prunekit.Selection.__module__, prunekit.seeds.__name__, "
            "prunekit.runtime.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, names = out.stdout.splitlines()
    assert loaded == "[]"
    assert names == "prunekit.selection.subset prunekit.seeds prunekit.runtime.context"
