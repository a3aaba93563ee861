"""The GPU check: everything this project wants from a lent GPU, in one bounded command.

A GPU is lent to this project now and then, for minutes (15 of device time a session, the
machine's start included), on a machine that can fetch nothing. So what runs there is prepared
here, tried here in a dry mode, and run there as one command (``eagle3-ref gpu-check --out
DIR``) whose steps each have a time limit, so that one slow step cannot eat the others' time:

1. **suite**: the CUDA half of the test suite: every test that takes the ``device``
   parameter (marker ``gpu``), with ``$EAGLE3_DEVICES=cuda`` so the CPU half is not run
   again. Each piece is proven there as on the CPU: fusion, head, tree, TTT, verification
   and the loop against ``generate`` in float64 and float32, every architecture of the
   matrix, and greedy decoding in bfloat16 and float16 with the tie-aware comparison.
2. **toy bench**: ``eagle3-ref bench`` on the trained toy pair, on the device (tau and
   speedup against plain decoding and SpS, the cycle profile, the cost model).
3. **8B shape**: ``eagle3-ref bench --shape llama-3.1-8b --dtype bfloat16``: a target
   shaped like Llama-3.1-8B with random weights, its cycles timed (no tau: a random head
   accepts nothing).

Every step runs as a subprocess of its own (a crash, a hang or an out-of-memory in one is
recorded and the next runs), writes its log and files under ``DIR/<step>/``, and the check
ends with ``DIR/gpu_check.md`` and ``DIR/gpu_check.json``: the machine, each step's verdict,
time and command, and the reports the steps wrote.

The dry mode (``--dry``) runs the same three steps on the CPU, sized to take a minute or
two: the suite's ``gpu`` tests with the ``smoke`` profile, a one-prompt toy bench and a
one-layer shape of the toy target. It proves the command end to end before a GPU is lent.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["STEPS", "Step", "plan", "device_test_files", "run_step", "environment", "run_gpu_check", "report"]

REPO = Path(__file__).resolve().parents[2]  # a clone: tests/ beside eagle3_ref/
TOY_TARGET = Path(__file__).resolve().parents[1] / "toy_model" / "target"
STEPS = ("suite", "toy_bench", "shape")  # in the order they run


@dataclass
class Step:
    """One step of the check: a command run in a subprocess with a time limit."""

    name: str  # also the folder under --out its files go to
    what: str  # one line for the report
    argv: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    reports: tuple[str, ...] = ()  # markdown files the step writes into its folder, shown in the report


def plan(out: Path, *, dry: bool = False, suite_args: tuple[str, ...] = ()) -> list[Step]:
    """The steps, for ``cuda`` (the real check) or ``dry`` (the same steps on the CPU, small).

    ``suite_args`` are added to the suite's pytest command (``-k`` to run a part of it)."""
    cli = [sys.executable, "-m", "eagle3_ref.cli"]
    device = "cpu" if dry else "cuda"
    suite_dir = out / "suite"
    tests = [str(path) for path in device_test_files(REPO / "tests")]
    tests.append(str(REPO / "eagle3_ref" / "testing" / "conformance"))
    suite = Step(
        "suite", f"the suite's `gpu` tests (every test that takes the device parameter), on {device} only",
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "eagle3_ref.testing.plugin",
         "-m", "gpu", "-rfE", f"--junitxml={suite_dir / 'junit.xml'}", *suite_args, *tests],
        timeout_s=120, env={"EAGLE3_DEVICES": device, "HYPOTHESIS_PROFILE": "smoke" if dry else "ci"})
    if dry:  # a minute on a CPU: one prompt, greedy only, no calibration
        toy_args = ["--prompts", "1", "--runs", "1", "--max-new-tokens", "16", "--temperatures", "0", "--no-auto",
                    "--no-profile"]
        shape_args = ["--shape", str(TOY_TARGET), "--shape-layers", "1", "--prompts", "1", "--runs", "1",
                      "--max-new-tokens", "6"]
    else:  # sized to fit a lease (8 minutes in all): both temperatures and the calibrated auto tree on the toy
        toy_args = ["--prompts", "2", "--runs", "2", "--max-new-tokens", "64"]
        shape_args = ["--shape", "llama-3.1-8b", "--dtype", "bfloat16", "--prompts", "1", "--runs", "2",
                      "--max-new-tokens", "48"]
    toy = Step("toy_bench", f"`eagle3-ref bench` on the trained toy pair, on {device}",
               [*cli, "bench", "--device", device, *toy_args, "--out", str(out / "toy_bench")],
               timeout_s=150 if dry else 180, reports=("bench.md",))
    shape = Step("shape", "`eagle3-ref bench --shape`: " + ("the toy target's shape, one layer, on cpu" if dry else
                 "Llama-3.1-8B's shape, random weights, bfloat16, on cuda"),
                 [*cli, "bench", "--device", device, *shape_args, "--out", str(out / "shape")],
                 timeout_s=120 if dry else 180, reports=("shape.md",))
    return [suite, toy, shape]


def device_test_files(folder: Path) -> list[Path]:
    """The test files of ``folder`` with a test that takes the ``device`` parameter. Only those
    are collected: the others may import what a GPU machine lacks (nbformat, mkdocs), and one
    collection error would stop the whole run."""
    import ast

    def takes_device(node) -> bool:
        return isinstance(node, ast.FunctionDef) and node.name.startswith("test") and \
            any(arg.arg == "device" for arg in node.args.args)

    return [path for path in sorted(folder.glob("test_*.py"))
            if any(takes_device(node) for node in ast.walk(ast.parse(path.read_text())))]


def _suite_counts(folder: Path, log: str) -> dict:
    """Tests run, failed, errored and skipped, from pytest's JUnit XML (or its last line, if the
    step was stopped before pytest wrote the XML), and the names of those that failed."""
    xml = folder / "junit.xml"
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                                  if case.find("failure") is not None or case.find("error") is not None]
        return counts
    last = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    return {"summary_line": last[-1].strip("= ") if last else None}


def run_step(step: Step, out: Path) -> dict:
    """Run ``step``; its output goes to ``out/<name>/log.txt``. Returns its record:
    verdict (``passed``, ``failed``, ``timed out``), exit code, seconds, command."""
    folder = out / step.name
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    start = time.perf_counter()
    try:
        done = subprocess.run(step.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=step.timeout_s)
        code, log, verdict = done.returncode, done.stdout, "passed" if done.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as stopped:
        code, verdict = None, "timed out"
        log = stopped.stdout.decode(errors="replace") if isinstance(stopped.stdout, bytes) else (stopped.stdout or "")
        log += f"\n[gpu-check: stopped after {step.timeout_s:g} s]\n"
    seconds = time.perf_counter() - start
    (folder / "log.txt").write_text(log)
    record = {"name": step.name, "what": step.what, "verdict": verdict, "exit_code": code,
              "seconds": round(seconds, 1), "timeout_s": step.timeout_s, "command": _shell(step),
              "reports": {name: (folder / name).read_text() for name in step.reports if (folder / name).is_file()}}
    if step.name == "suite":
        record["counts"] = _suite_counts(folder, log)
    if verdict != "passed":
        record["log_tail"] = "\n".join(log.rstrip().splitlines()[-30:])
    return record


def _shell(step: Step) -> str:
    """The step's command as a user would type it (paths shown relative to the clone)."""
    words = [f"{k}={v}" for k, v in step.env.items()]
    for word in step.argv:
        word = "python" if word == sys.executable else word.replace(str(REPO) + os.sep, "")
        words.append(word if re.fullmatch(r"[\w@%+=:,./-]+", word) else repr(word))
    return " ".join(words)


def environment() -> dict:
    """The machine: Python, torch, transformers, hypothesis, and the GPU torch sees."""
    import hypothesis
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "hypothesis": hypothesis.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
           "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", cuda_runtime=torch.version.cuda)
    return env


def report(env: dict, records: list[dict], dry: bool) -> str:
    """The markdown report: the machine, a table of the steps, then what each step wrote."""
    machine = env.get("gpu", "no GPU") + f", {env['cpus']} CPUs; Python {env['python']}, torch {env['torch']}, " \
        f"transformers {env['transformers']}, hypothesis {env['hypothesis']}"
    lines = [f"# eagle3-ref gpu-check{' (dry: on the CPU)' if dry else ''}", "", f"Machine: {machine}.", "",
             "| step | verdict | seconds | limit | what |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['name']} | {r['verdict']} | {r['seconds']:.1f} | {r['timeout_s']:g} | {r['what']} |")
    for r in records:
        lines += ["", f"## {r['name']}: {r['verdict']}", "", f"`{r['command']}`"]
        counts = r.get("counts")
        if counts and "tests" in counts:
            lines += ["", f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, "
                      f"{counts['skipped']} skipped."]
            lines += [f"- failed: `{name}`" for name in counts["failed_tests"]]
        elif counts:
            lines += ["", f"pytest's last line: {counts['summary_line']}"]
        for text in r["reports"].values():
            lines += ["", text.rstrip()]
        if "log_tail" in r:
            lines += ["", "The end of its log:", "", "```", r["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def run_gpu_check(out: str | Path, *, dry: bool = False, only: tuple[str, ...] = (),
                  suite_args: tuple[str, ...] = ()) -> int:
    """Run the check into ``out``; 0 if every step passed, else 1. ``only``: step names to run
    (default all). Refuses a real run without CUDA, by name, before any work."""
    import torch

    if not dry and not torch.cuda.is_available():
        raise ValueError("gpu-check: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                         "--dry runs the same steps on the CPU")
    out = Path(out).resolve()
    steps = plan(out, dry=dry, suite_args=suite_args)
    unknown = sorted(set(only) - {s.name for s in steps})
    if unknown:
        raise ValueError(f"--only: no step named {', '.join(unknown)} (steps: "
                         f"{', '.join(s.name for s in steps)})")
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    records = []
    for step in steps:
        if only and step.name not in only:
            continue
        print(f"gpu-check: {step.name} (at most {step.timeout_s:g} s) ...", file=sys.stderr, flush=True)
        records.append(run_step(step, out))
        print(f"gpu-check: {step.name}: {records[-1]['verdict']} in {records[-1]['seconds']:.0f} s", file=sys.stderr,
              flush=True)
        # Written after every step: a check stopped from outside keeps what it finished.
        (out / "gpu_check.json").write_text(json.dumps({"dry": dry, "environment": env, "steps": records}, indent=1))
        (out / "gpu_check.md").write_text(report(env, records, dry))
    return 0 if all(r["verdict"] == "passed" for r in records) else 1

