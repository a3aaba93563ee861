"""Hypothesis profile (``$HYPOTHESIS_PROFILE``: ci / dev / thorough) and the ``device``
parameter (``cpu``, and ``cuda`` when available) for the conformance suite."""

import pytest

from eagle3_ref.testing.plugin import devices, load_profile

load_profile()


@pytest.fixture(scope="session", params=devices())
def device(request) -> str:
    return request.param
