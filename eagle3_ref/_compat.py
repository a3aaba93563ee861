"""The old import paths of modules that moved, kept for one release (removed in 0.3).

0.1 had every module flat in ``eagle3_ref/``; the tools and the cost-aware tree now live in
subpackages so that the paper's concepts stand alone at the top (README, "What is here").
``import eagle3_ref.bench`` still works: it warns (``DeprecationWarning``) and gives the
module at its new path, the same module object, so state and ``isinstance`` agree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED", "install_moved_module_aliases"]

MOVED = {
    "eagle3_ref.costs": "eagle3_ref.costaware.costs",
    "eagle3_ref.auto_tree": "eagle3_ref.costaware.auto_tree",
    **{f"eagle3_ref.{name}": f"eagle3_ref.tools.{name}"
       for name in ("demo", "bench", "shapes", "check_head", "ablate", "assignment", "gpu_check")},
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of :data:`MOVED` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path is removed in eagle3-ref 0.3",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(MOVED[spec.name])
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.own_spec  # the import system stamped the old path's spec on it: give its own back


def install_moved_module_aliases() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
