"""The project's own suite: hypothesis profile and devices, as in the conformance suite.

* ``device``: every test that takes it runs on ``cpu``, and again on ``cuda`` when one is
  available (same test, same properties).
* Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE``: ``ci`` (default, a few examples
  per property so the suite stays within minutes on 2 cores), ``dev`` and ``thorough``.
* ``impl`` and ``--eagle3-impl`` come from the plugin :mod:`eagle3_ref.testing.plugin`
  (an entry point: installing the project registers it). The conformance suite itself is
  ``eagle3_ref/testing/conformance``; the tests here are the reference's own.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from eagle3_ref.testing.plugin import devices, load_profile, mark_device_tests

load_profile()
DEVICES = devices()


@pytest.fixture(scope="session", params=DEVICES)
def device(request) -> str:
    return request.param


def pytest_report_header(config):
    return [f"devices: {DEVICES}; hypothesis profile: {settings._current_profile}"]


@pytest.fixture(scope="session")
def executed_notebooks(tmp_path_factory):
    """``run(path) -> path of the executed copy``: each tutorial runs at most once a session,
    with the same function the docs site uses, and the site test reuses the copies."""
    import importlib.util
    from pathlib import Path

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "eagle3_ref_site_hooks", Path(__file__).resolve().parents[1] / "docs" / "mkdocs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    out = tmp_path_factory.mktemp("executed_notebooks")

    def run(path: Path) -> Path:
        executed = out / path.name
        if not executed.exists():
            workdir = tmp_path_factory.mktemp(path.stem)
            nbformat.write(hooks.execute_notebook(path, workdir), executed)  # raises on a failing cell
        return executed

    run.directory = out
    return run


@pytest.fixture(scope="session")
def run_conformance():
    """``run(spec, marker, cwd, *options) -> (exit code, stdout + stderr)``: the conformance
    suite against ``--eagle3-impl=spec`` in a fresh pytest process, as a user types it, from
    ``cwd`` (also put on ``PYTHONPATH``, for adapters written there), profile ``quick``, seed 0."""
    import os
    import subprocess
    import sys

    def run(spec: str, marker: str, cwd, *options: str) -> tuple[int, str]:
        # One torch thread: callers run two at once on two cores, and two processes of two
        # threads each spin against each other (2.5x slower measured on the assignment grader).
        env = dict(os.environ, HYPOTHESIS_PROFILE="quick", PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
        env.pop("EAGLE3_IMPL", None)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *options,
               "--pyargs", "eagle3_ref.testing.conformance", "-m", marker, f"--eagle3-impl={spec}"]
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr

    return run


def pytest_collection_modifyitems(items):
    mark_device_tests(items)  # -m gpu: the tests that take the device parameter
