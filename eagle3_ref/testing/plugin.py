"""The pytest plugin behind ``--eagle3-impl``, registered as the ``pytest11`` entry point
``eagle3_ref.testing.plugin`` (installing eagle3-ref is enough; no conftest needed).

It adds:

* ``--eagle3-impl=package.module[:NAME]``: the implementation under test, the module's
  ``ADAPTER`` (or ``NAME``); ``$EAGLE3_IMPL`` alike; default the reference;
* the fixture ``impl`` (that adapter), and the conformance markers (``fusion``, ``head``,
  ``vocab``, ``ttt``, ``tree``, ``verify``, ``generate``);
* :func:`load_profile` and :func:`devices`, which the suites' own conftests call for the
  hypothesis profiles and the ``device`` parameters (not done here: a plugin that every
  pytest run loads must not change other projects' settings or fixtures);
* on every failing test that uses ``impl``, a report section naming the implementation's
  module. Hypothesis adds the shrunk counterexample, and the suite's assertions
  (:mod:`eagle3_ref.testing.divergence`) the first divergence with both values.

Run the conformance suite against your implementation::

    python -m pytest --pyargs eagle3_ref.testing.conformance --eagle3-impl=my_package.my_adapter
"""

from __future__ import annotations

import os

import pytest

from . import ENV_VAR  # see eagle3_ref/testing/__init__.py

# Imported lazily: this module is loaded by *every* pytest run in an environment where
# eagle3-ref is installed, so it must cost nothing and need neither torch nor hypothesis.
PROFILE_VAR = "HYPOTHESIS_PROFILE"
CONFORMANCE_MARKERS = {
    "fusion": "feature fusion (which layers, collecting them, fc)",
    "head": "the token-predicting draft head and its KV cache",
    "vocab": "the reduced draft vocabulary (d2t / t2d)",
    "ttt": "training-time test",
    "tree": "the dynamic draft tree",
    "verify": "lossless verification, greedy and sampling",
    "generate": "the speculative decoding loop",
}


def load_profile() -> str:
    """Register the hypothesis profiles ``ci`` (20 examples per property), ``dev`` (60),
    ``thorough`` (400), ``quick`` (``ci`` without the explain phase: for grading and the
    oracle runs), ``smoke`` (5 examples, no shrinking: the suite's own round trips) and
    ``student`` (10 examples, no shrinking, one failure a test: a skeleton's default), and
    load the one ``$HYPOTHESIS_PROFILE`` names (default ``ci``).
    Called by the conftest of each suite that uses them."""
    from hypothesis import HealthCheck, Phase, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                  print_blob=True)
    settings.register_profile("ci", max_examples=20, **common)
    settings.register_profile("dev", max_examples=60, **common)
    settings.register_profile("thorough", max_examples=400, **common)
    # For grading and oracle runs, where the failure matters more than its last detail:
    # shrink, but skip the "explain" phase (it re-runs a failing example many times).
    settings.register_profile("quick", max_examples=20, phases=[p for p in Phase if p != Phase.explain], **common)
    # For the suite's own round trips (a skeleton must fail, a solution must pass): few
    # examples, no shrinking. Never for a real check.
    settings.register_profile("smoke", max_examples=5, phases=[Phase.explicit, Phase.reuse, Phase.generate], **common)
    # The default in a student's skeleton (eagle3-ref assignment make): its first run is all red, and
    # must end in seconds: each property reports the first failing example it meets, unshrunk, and
    # stops there. `quick` (the grader's) shrinks to the smallest counterexample.
    settings.register_profile("student", max_examples=10, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                              report_multiple_bugs=False, **common)
    name = os.environ.get(PROFILE_VAR, "ci")
    settings.load_profile(name)
    return name


# Examples per architecture in the architecture-matrix properties, which run once for every
# architecture (so each is proven in every profile) rather than drawing one per example.
EXAMPLES_PER_ARCHITECTURE = {"ci": 3, "quick": 2, "smoke": 1, "student": 1, "dev": 10, "thorough": 50}


def examples_per_architecture() -> int:
    """How many examples each architecture gets in the matrix properties, by profile."""
    return EXAMPLES_PER_ARCHITECTURE.get(os.environ.get(PROFILE_VAR, "ci"), 3)


DEVICES_VAR = "EAGLE3_DEVICES"
DEVICE_MARKER = "gpu"


def devices() -> list[str]:
    """The suites' ``device`` parameters: ``cpu``, and ``cuda`` when one is available; or the
    comma-separated list in ``$EAGLE3_DEVICES`` (``cuda`` alone is the CUDA half of the suite,
    as ``eagle3-ref gpu-check`` runs it). A device named there that this machine lacks is an
    error, not a silent skip: a GPU check must not pass by running nothing."""
    import torch

    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    asked = os.environ.get(DEVICES_VAR, "").strip()
    if not asked:
        return available
    names = [name.strip() for name in asked.split(",") if name.strip()]
    unknown = [name for name in names if name not in ("cpu", "cuda")]
    if unknown or not names:
        raise pytest.UsageError(f"${DEVICES_VAR}={asked!r}: expected a comma-separated list of cpu and cuda")
    missing = [name for name in names if name not in available]
    if missing:
        raise pytest.UsageError(f"${DEVICES_VAR}={asked!r}: this machine has no {', '.join(missing)} "
                                f"(torch.cuda.is_available() is False)")
    return list(dict.fromkeys(names))


def mark_device_tests(items) -> None:
    """Give every test that takes the ``device`` parameter the ``gpu`` marker: the subset that
    proves each piece on a device (``-m gpu``), found from the fixture itself so it cannot drift
    from what is parametrised. Called by the suites' conftests from
    ``pytest_collection_modifyitems``."""
    for item in items:
        if "device" in getattr(getattr(item, "callspec", None), "params", {}):
            item.add_marker(DEVICE_MARKER)


def impl_spec(config) -> str:
    """The implementation under test, as given (option, then environment, then the reference)."""
    return config.getoption("--eagle3-impl") or os.environ.get(ENV_VAR) or "eagle3_ref.testing.adapter"


def pytest_addoption(parser):
    parser.addoption("--eagle3-impl", default=None, metavar="package.module[:NAME]",
                     help="the EAGLE-3 implementation under test: a module whose ADAPTER (or NAME) is an "
                          f"Eagle3Adapter (default: ${ENV_VAR}, else the reference eagle3_ref)")
    parser.addoption("--eagle3-test-timeout", default=None, type=float, metavar="SECONDS",
                     help="fail a test that runs longer than this (an endless loop in the implementation), "
                          "and go on with the next; POSIX only (SIGALRM)")


class TestTimedOut(BaseException):
    """Raised into a test that ran past ``--eagle3-test-timeout``.

    A ``BaseException`` on purpose: hypothesis treats an ``Exception`` (or pytest's ``Failed``,
    which pytest-timeout raises) as a failing example and runs it again to shrink it, so an
    endless loop would be entered again with no alarm left. This passes through hypothesis to
    pytest, which reports the test as failed and goes on."""

    __test__ = False  # not a test class, whatever its name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    import signal

    from .adapter import FILTERED

    item.eagle3_filtered_before = FILTERED.copy()  # what this test filters: see pytest_runtest_makereport
    seconds = item.config.getoption("--eagle3-test-timeout")
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum, frame):
        raise TestTimedOut(f"stopped after {seconds:g} s (--eagle3-test-timeout): an endless loop, or far too slow")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pytest_configure(config):
    for name, text in CONFORMANCE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("--eagle3-impl") or os.environ.get(ENV_VAR):
        # Loaded once, now: a typo is one usage error, not the same error in every test that uses it.
        try:
            _adapter(config)
        except ValueError as err:
            raise pytest.UsageError(f"--eagle3-impl: {err}") from None
    config.addinivalue_line("markers", f"{DEVICE_MARKER}: every test that takes the device parameter (cpu, cuda): the "
                                       "subset eagle3-ref gpu-check runs on CUDA")
    config.addinivalue_line("markers", "ungraded: tests no solution region of the course assignment (batches, the TTT "
                                       "loss); eagle3-ref assignment grade leaves it out")


def pytest_report_header(config):
    if config.getoption("--eagle3-impl") or os.environ.get(ENV_VAR):
        return [f"eagle3 implementation under test: {impl_spec(config)}"]
    return None


_LOADED: dict[str, object] = {}


def _adapter(config):
    """The adapter under test, loaded once per session."""
    from .adapter import load_adapter

    spec = impl_spec(config)
    if spec not in _LOADED:
        _LOADED[spec] = load_adapter(spec)
    return _LOADED[spec]


@pytest.fixture(scope="session")
def impl(request):
    """The :class:`~eagle3_ref.testing.adapter.Eagle3Adapter` under test, behind
    :class:`~eagle3_ref.testing.adapter.CheckedAdapter` (out-of-scope examples filtered)."""
    from .adapter import CheckedAdapter
    from .strategies import set_head_shapes

    adapter = _adapter(request.config)
    set_head_shapes(getattr(adapter, "head_shapes", "production"))  # what the adapter's heads may be
    return CheckedAdapter(adapter)


def pytest_runtest_setup(item):
    """A conformance test of a piece the implementation does not declare is skipped as
    "not implemented", never failed."""
    if "impl" not in getattr(item, "fixturenames", ()):
        return
    pieces = [m.name for m in item.iter_markers() if m.name in CONFORMANCE_MARKERS]
    if not pieces:
        return
    from .adapter import adapter_name, declared_pieces

    adapter = _adapter(item.config)
    missing = [p for p in pieces if p not in declared_pieces(adapter)]
    if missing:
        pytest.skip(f"not implemented by {adapter_name(adapter)}: {', '.join(missing)}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Close the report with what the implementation declared and what was filtered."""
    if not (config.getoption("--eagle3-impl") or os.environ.get(ENV_VAR)) or impl_spec(config) not in _LOADED:
        return
    from .adapter import FILTERED, PIECES, adapter_name, declared_pieces

    adapter = _LOADED[impl_spec(config)]
    lines = [f"implementation under test: {adapter_name(adapter)} ({impl_spec(config)}), precision "
             f"{getattr(adapter, 'precision', 'float64')}"]
    absent = [p for p in PIECES if p not in declared_pieces(adapter)]
    if absent:
        lines.append(f"not implemented (their tests skipped): {', '.join(absent)}")
    if FILTERED:
        lines.append(f"examples filtered as out of scope: {sum(FILTERED.values())}")
        lines += [f"  {count} x {reason}" for reason, count in FILTERED.most_common()]
    if NOT_SUPPORTED:
        lines.append(f"tests not supported (every example out of scope, skipped): {len(NOT_SUPPORTED)}")
        lines += [f"  {name}: {reason}" for name, reason in NOT_SUPPORTED.items()]
    terminalreporter.write_sep("=", "eagle3 conformance")
    for line in lines:
        terminalreporter.write_line(line)


NOT_SUPPORTED: dict[str, str] = {}  # test id -> why: every example it drew was out of the adapter's scope


def _not_supported(item, call) -> str | None:
    """Why a test that failed only because hypothesis could draw no example the adapter takes
    (every one filtered as out of scope: a health check, or Unsatisfiable) is "not supported"
    rather than failed; None for any other failure."""
    from hypothesis.errors import FailedHealthCheck, Unsatisfiable

    from .adapter import FILTERED

    before = getattr(item, "eagle3_filtered_before", None)
    if call.excinfo is None or before is None or not isinstance(call.excinfo.value, (FailedHealthCheck, Unsatisfiable)):
        return None
    added = FILTERED - before
    return "; ".join(f"{count} x {reason}" for reason, count in added.most_common()) or None


@pytest.hookimpl(hookwrapper=True)  # the old-style wrapper: works with any pytest this may be loaded into
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call" and "impl" in getattr(item, "fixturenames", ()):
        reason = _not_supported(item, call)
        if reason:  # a case the implementation cannot take is counted, never failed
            from .adapter import adapter_name

            name = adapter_name(_LOADED[impl_spec(item.config)]) if impl_spec(item.config) in _LOADED else "?"
            NOT_SUPPORTED[item.nodeid] = reason
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0,
                               f"not supported by {name}: every example drawn was out of its scope ({reason})")
            return
    if report.failed and "impl" in getattr(item, "fixturenames", ()):
        from .adapter import adapter_name

        name = adapter_name(_LOADED[impl_spec(item.config)]) if impl_spec(item.config) in _LOADED else "?"
        report.sections.append(("eagle3 implementation under test",
                                f"{name} ({impl_spec(item.config)}, chosen by --eagle3-impl or ${ENV_VAR})"))
