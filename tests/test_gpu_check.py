"""``eagle3-ref gpu-check``: the one command a lent GPU runs, tried here in its dry mode.

What would go wrong on the day: a step that crashes or hangs takes the others with it; a
suite that selects nothing passes; the CUDA half runs the CPU half again (or nothing, on a
machine without CUDA, silently); a test file the GPU machine cannot import stops the run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eagle3_ref.cli import main
from eagle3_ref.testing import plugin
from eagle3_ref.tools import gpu_check

pytestmark = pytest.mark.cli
REPO = Path(__file__).resolve().parents[1]


def test_the_dry_check_runs_every_step_end_to_end(tmp_path, capsys):
    out = tmp_path / "check"
    code = main(["gpu-check", "--dry", "--out", str(out), "--suite-filter", "argmax_chain or reproducible"])
    assert code == 0, capsys.readouterr().out
    data = json.loads((out / "gpu_check.json").read_text())
    assert [s["name"] for s in data["steps"]] == list(gpu_check.STEPS)
    assert all(s["verdict"] == "passed" for s in data["steps"])
    suite = data["steps"][0]
    assert suite["counts"]["tests"] == 2 and suite["counts"]["failures"] == 0  # on cpu only: one test per device
    assert "EAGLE3_DEVICES=cpu" in suite["command"] and "-m gpu" in suite["command"]
    report = (out / "gpu_check.md").read_text()
    for text in ("| suite | passed", "| toy_bench | passed", "| shape | passed", "A plain decoding step:",
                 "| EAGLE-3 chain (top_k=1, 7 deep) | 0 |"):  # the shape's and the bench's own reports are in it
        assert text in report
    assert (out / "toy_bench" / "bench.json").is_file() and (out / "shape" / "costs.json").is_file()


def test_a_suite_that_runs_nothing_fails_the_check(tmp_path):
    code = main(["gpu-check", "--dry", "--only", "suite", "--out", str(tmp_path), "--suite-filter", "no_such_test"])
    step = json.loads((tmp_path / "gpu_check.json").read_text())["steps"][0]
    assert code == 1 and step["verdict"] == "failed" and step["exit_code"] == 5  # pytest: no tests ran
    assert "log_tail" in step and "The end of its log" in (tmp_path / "gpu_check.md").read_text()


def test_a_step_past_its_limit_is_stopped_and_the_check_goes_on(tmp_path):
    slow = gpu_check.Step("slow", "sleeps", [sys.executable, "-c", "import time; print('started'); time.sleep(30)"],
                          timeout_s=1.0)
    record = gpu_check.run_step(slow, tmp_path)
    assert record["verdict"] == "timed out" and record["exit_code"] is None and record["seconds"] < 10
    assert "stopped after 1 s" in (tmp_path / "slow" / "log.txt").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_the_real_check_refuses_a_machine_without_cuda_by_name(tmp_path, capsys):
    assert main(["gpu-check", "--out", str(tmp_path)]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_an_unknown_step_is_refused_before_any_work(tmp_path, capsys):
    assert main(["gpu-check", "--dry", "--only", "suite,bench", "--out", str(tmp_path / "o")]) == 2
    assert "no step named bench" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_devices_follow_the_environment(monkeypatch):
    monkeypatch.setenv(plugin.DEVICES_VAR, "cpu")
    assert plugin.devices() == ["cpu"]
    for bad, words in [("tpu", "a comma-separated list of cpu and cuda"), (" , ", "a comma-separated list")] + \
            ([] if torch.cuda.is_available() else [("cuda", "this machine has no cuda")]):
        monkeypatch.setenv(plugin.DEVICES_VAR, bad)
        with pytest.raises(pytest.UsageError, match=words):
            plugin.devices()


def test_the_gpu_marker_is_every_device_test_and_the_check_collects_them_all():
    # Collected over the whole of tests/: every test the marker selects lives in a file the check
    # passes to pytest (the others are left out because a GPU machine may not import them).
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "gpu", "tests",
               "eagle3_ref/testing/conformance"]
    env = {**os.environ, plugin.DEVICES_VAR: "cpu"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert len(ids) > 40 and all("[cpu" in i for i in ids), done.stdout[-2000:]
    files = {REPO / i.split("::")[0] for i in ids if i.startswith("tests/")}
    assert files == set(gpu_check.device_test_files(REPO / "tests"))
    for piece in ("test_fusion", "test_head", "test_tree", "test_ttt", "test_verify", "test_generate"):
        assert any(f"conformance/{piece}.py" in i for i in ids), f"no device test of {piece} in the conformance suite"
