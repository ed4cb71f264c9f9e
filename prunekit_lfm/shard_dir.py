"""Old home of :mod:`prunekit.io.shard_dir`, importable for one release with a warning.

``import prunekit_lfm.shard_dir`` gives the core module object itself, so a patch applies
to both names.
"""

import sys
import warnings

from prunekit.io import shard_dir

warnings.warn("prunekit_lfm.shard_dir moved to prunekit.io.shard_dir; the old path goes in the "
              "next release.", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = shard_dir
