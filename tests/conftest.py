"""Shared fixtures: devices, hypothesis profiles, and the implementation under test.

* ``device``: every test that takes it runs on ``cpu``, and again on ``cuda`` when one is
  available (same test, same properties).
* Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE``: ``ci`` (default, a few examples
  per property so the suite stays within minutes on 2 cores), ``dev`` and ``thorough``.
* ``impl``: the :class:`~eagle3_ref.testing.adapter.Eagle3Adapter` under test; the
  reference unless ``--eagle3-impl=package.module`` or ``EAGLE3_IMPL`` names another.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from eagle3_ref.testing.adapter import load_adapter

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=20, **_common)
settings.register_profile("dev", max_examples=60, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_addoption(parser):
    parser.addoption("--eagle3-impl", default=None,
                     help="package.module whose ADAPTER is the implementation under test (default: the reference)")


@pytest.fixture(scope="session", params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def impl(request):
    return load_adapter(request.config.getoption("--eagle3-impl"))


def pytest_report_header(config):
    spec = config.getoption("--eagle3-impl") or os.environ.get("EAGLE3_IMPL") or "eagle3_ref (reference)"
    return [f"eagle3 implementation under test: {spec}",
            f"devices: {DEVICES}; hypothesis profile: {settings._current_profile}"]
