"""Hypothesis profile (``$HYPOTHESIS_PROFILE``: ci / dev / thorough) and the ``device``
parameter (``cpu``, and ``cuda`` when available) for the conformance suite."""

import pytest

from eagle3_ref.testing.plugin import devices, load_profile, mark_device_tests

load_profile()


@pytest.fixture(scope="session", params=devices())
def device(request) -> str:
    return request.param


def pytest_collection_modifyitems(items):
    mark_device_tests(items)  # -m gpu: the tests that take the device parameter
