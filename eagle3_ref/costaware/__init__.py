"""The cost-aware tree, built on the core: a measured cost model of this machine
(:mod:`.costs`) and a tree that chooses its depth and size every cycle from it and from the
draft's calibrated scores (:mod:`.auto_tree`). Not in the paper: EAGLE-2 and EAGLE-3 fix the
tree's size by hand. The core (:mod:`eagle3_ref.tree`, :mod:`eagle3_ref.generate`) never
imports this package: a cost-aware config is a :class:`eagle3_ref.tree.TreeConfig` that
overrides how it grows."""

from .auto_tree import AutoTreeConfig, Calibration, calibrate, speedup_bound
from .costs import CostModel, measure_costs

__all__ = ["CostModel", "measure_costs", "AutoTreeConfig", "Calibration", "calibrate", "speedup_bound"]
