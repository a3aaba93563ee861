"""The conformance suite as an oracle for other implementations.

Run against each deliberately buggy implementation in ``eagle3_ref.testing.buggy`` (one
classic bug per core piece), the suite must fail, and the failure must name the
implementation under test, the first divergence with both values, and (for property
tests) the shrunk counterexample hypothesis found. Each run is a separate pytest process,
exactly as a user would type it, from a directory outside the repository.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from eagle3_ref.testing.adapter import load_adapter
from eagle3_ref.testing.buggy import BUGS
from eagle3_ref.testing.divergence import assert_same, first_divergence

pytestmark = pytest.mark.oracle


def run_conformance(spec: str, marker: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYPOTHESIS_PROFILE="quick")
    env.pop("EAGLE3_IMPL", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0",
           "--pyargs", "eagle3_ref.testing.conformance", "-m", marker, f"--eagle3-impl={spec}"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_every_classic_bug_is_caught_and_located(tmp_path):
    specs = {name: f"eagle3_ref.testing.buggy:{name}" for name in BUGS}
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(BUGS, pool.map(lambda n: run_conformance(specs[n], BUGS[n], tmp_path), BUGS)))
    for name, run in runs.items():
        out = run.stdout + run.stderr
        assert run.returncode == 1, f"{name}: the {BUGS[name]} tests did not fail (exit {run.returncode}):\n{out[-3000:]}"
        assert "1 failed" in out, f"{name}: {out[-2000:]}"
        assert "eagle3 implementation under test" in out and specs[name] in out, f"{name}: module not named"
        assert "first divergence at" in out and "reference" in out and "implementation" in out, \
            f"{name}: no first divergence in words:\n{out[-3000:]}"
        if BUGS[name] != "verify":  # verify also has a fixed two-children case, with no counterexample to shrink
            # hypothesis' heading for the shrunk case: "Falsifying example", "Failing test case" since 6.16x
            assert "Falsifying example" in out or "Failing test case" in out, f"{name}: no counterexample:\n{out[-3000:]}"


def test_load_adapter_names_what_is_wrong(tmp_path, monkeypatch):
    assert load_adapter("eagle3_ref.testing.buggy:TTT_SEES_FUTURE").name.startswith("buggy")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_adapter("no_such_module_xyz")
    with pytest.raises(ValueError, match="defines no ADAPTER"):
        load_adapter("eagle3_ref.testing.buggy")
    (tmp_path / "half_adapter.py").write_text("class A:\n    def build_tree(self, *a): pass\nADAPTER = A()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="lacks .*'collect_features'"):
        load_adapter("half_adapter")


def test_first_divergence_in_words():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([[1.0, 2.0], [3.0, 4.5]], [[1.0, 2.0], [3.0, 4.0]]) == ((1, 1), 4.5, 4.0)
    assert first_divergence([1.0, float("nan")], [1.0, 2.0])[0] == (1,)
    assert first_divergence([1.0, 2.0 + 1e-9], [1.0, 2.0], atol=1e-6) is None
    with pytest.raises(AssertionError, match=r"tree_mask: first divergence at row 2, column 0: reference False, "
                                             r"implementation True; 1 of 9"):
        assert_same(torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]]).bool(),
                    torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]]).bool(), "tree_mask", where=("row", "column"))
    with pytest.raises(AssertionError, match=r"shape is \(2,\), the reference's \(3,\)"):
        assert_same([1, 2], [1, 2, 3], "tokens")
