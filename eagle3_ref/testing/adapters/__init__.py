"""Adapters for implementations that are not the reference (see :mod:`eagle3_ref.testing.adapter`).

* :mod:`eagle3_ref.testing.adapters.float32` -- the reference computing in float32: a correct
  implementation with float32 internals, which calibrates the float32 tolerances.
* :mod:`eagle3_ref.testing.adapters.specforge` -- SpecForge 0.2.0's draft head (docs/peers.md).
* :mod:`eagle3_ref.testing.adapters.submission` -- a student's assignment, as the grader runs it.
"""
