"""Hydra plugin: the sweeps (``l2o_pipeline/sweeps``) on l2o's config search path.

So that ``l2o --config-name table2`` finds a sweep from any folder, from a wheel as from a
checkout, without ``--config-dir``. Hydra imports every module under the ``hydra_plugins``
namespace package for every Hydra app: this one imports nothing of l2o_pipeline, and adds the
sweeps only to the app whose primary config folder is l2o_pipeline's ``conf``.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "l2o_pipeline-sweeps"
PRIMARY = "l2o_pipeline/conf"  # l2o's primary config folder, as the search path names it


class L2OSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for element in search_path.get_path():
            path = (element.path or "").rstrip("/\\")  # file:///.../l2o_pipeline/conf
            if element.provider == "main" and path.replace("\\", "/").endswith(PRIMARY):
                # Last: --config-dir and the primary folder win on a clash of names.
                search_path.append(PROVIDER, path[: -len("conf")] + "sweeps")
                return
