"""Old name of :mod:`prunekit_lfm.fm_path`, importable for one release with a warning.

``import prunekit_lfm.paths`` gives the module object of ``fm_path`` itself, so a patch
applies to both names.
"""

import sys
import warnings

from . import fm_path

warnings.warn("prunekit_lfm.paths is now prunekit_lfm.fm_path; the old name goes in the next "
              "release.", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = fm_path
