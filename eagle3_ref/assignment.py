"""Course assignments: a student skeleton of eagle3-ref, graded by the conformance suite.

The core modules mark their solution regions::

    # --- assignment tree: <the hint, wrapped over
    #   continuation lines>
    ...the reference's code...
    # --- end assignment

``make(out)`` copies the package with every such region replaced by
``raise NotImplementedError("tree: <the hint>")``, and adds a README, a ``pyproject.toml``
and ``grade.py``. The tests are the conformance suite itself
(``eagle3_ref/testing/conformance``), whose modules carry one marker per task; the
adapter there calls the student's modules, so the same tests that prove the reference
grade the student.

``grade(root)`` runs the suite once in a fresh process with the skeleton first on the path
and prints a score per task: the number of the task's tests that pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["TASKS", "strip_solutions", "make", "grade", "format_scores"]

# In teaching order; each builds on the ones before it (the tree drafts with the head,
# decoding needs fusion, the head, the tree and verification).
TASKS = ("fusion", "head", "ttt", "tree", "verify", "generate")
_BEGIN = re.compile(r"^(?P<indent>\s*)# --- assignment (?P<task>\w+): (?P<hint>.*)$")
_END = "# --- end assignment"
PACKAGE = Path(__file__).resolve().parent


def strip_solutions(source: str, filename: str = "<source>") -> tuple[str, list[str]]:
    """Replace every solution region of ``source``; return the new text and the tasks found."""
    lines, out, tasks = source.split("\n"), [], []
    i = 0
    while i < len(lines):
        m = _BEGIN.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, task, hint = m.group("indent"), m.group("task"), [m.group("hint")]
        if task not in TASKS:
            raise ValueError(f"{filename}:{i + 1}: unknown assignment task {task!r} (tasks: {', '.join(TASKS)})")
        i += 1
        while i < len(lines) and lines[i].startswith(indent + "#   "):
            hint.append(lines[i][len(indent) + 4:])
            i += 1
        start = i
        while i < len(lines) and lines[i].strip() != _END:
            if _BEGIN.match(lines[i]):
                raise ValueError(f"{filename}:{i + 1}: an assignment region opens inside another")
            i += 1
        if i == len(lines):
            raise ValueError(f"{filename}:{start}: assignment region {task!r} is never closed with {_END!r}")
        text = " ".join(hint).replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'{indent}raise NotImplementedError("{task}: {text}")')
        tasks.append(task)
        i += 1
    return "\n".join(out), tasks


_README = """# EAGLE-3, as an assignment

This is eagle3-ref (an educational reference implementation of EAGLE-3 speculative decoding,
arXiv 2503.01840) with the heart of each piece taken out. Every `raise NotImplementedError`
is yours to replace; its message is the hint. Tasks, in order (each builds on the ones before):

{tasks}

Set up (a fresh virtual environment: this package is called `eagle3_ref`, like the reference):

    pip install -e .

Run one task's tests, or grade them all:

    python -m pytest -m tree
    python grade.py

The tests are eagle3-ref's conformance suite: property-based (hypothesis) proofs against
naive versions that are *not* yours to write (brute-force trees, unrolled drafting,
transformers' own `generate`). A failure names the first divergence with both values and
the smallest counterexample hypothesis found. `HYPOTHESIS_PROFILE=dev` tries more examples.
"""

_GRADE = """\"\"\"Print a score per task: the number of its conformance tests that pass.\"\"\"
import sys
from pathlib import Path

root = Path(__file__).resolve().parent
sys.path.insert(0, str(root))
from eagle3_ref.assignment import format_scores, grade  # noqa: E402  (this skeleton's own copy)

scores = grade(root)
print(format_scores(scores))
sys.exit(0 if all(passed == total for passed, total in scores.values()) else 1)
"""


def make(out: str | Path, source: str | Path = PACKAGE) -> dict[str, list[str]]:
    """Write the skeleton to ``out`` (which must not exist or be empty). Returns
    {file relative to the package: tasks taken out of it}."""
    out, source = Path(out), Path(source)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "toy_model", ".hypothesis")
    shutil.copytree(source, out / "eagle3_ref", ignore=ignore, dirs_exist_ok=True)
    regions: dict[str, list[str]] = {}
    for path in sorted((out / "eagle3_ref").rglob("*.py")):
        if path.name == "assignment.py":  # its docstring shows the markers
            continue
        text, tasks = strip_solutions(path.read_text(), str(path))
        if tasks:
            path.write_text(text)
            regions[str(path.relative_to(out / "eagle3_ref"))] = tasks
    missing = [t for t in TASKS if not any(t in tasks for tasks in regions.values())]
    if missing:
        raise ValueError(f"no solution region for task(s) {missing} in {source}")
    pyproject = source.parent / "pyproject.toml"
    text = pyproject.read_text() if pyproject.exists() else ""
    text = re.sub(r"(?m)^testpaths = .*$", 'testpaths = ["eagle3_ref/testing/conformance"]', text)
    (out / "pyproject.toml").write_text(text)
    per_task = "\n".join(f"- `{t}`: " + ", ".join(f"`eagle3_ref/{f}`" for f, ts in regions.items() if t in ts)
                         for t in TASKS)
    (out / "README.md").write_text(_README.format(tasks=per_task))
    (out / "grade.py").write_text(_GRADE)
    return regions


def _task_of(classname: str) -> str | None:
    module = classname.split(".")[-1]  # ...conformance.test_tree -> test_tree
    task = module.removeprefix("test_")
    return task if task in TASKS else None


def grade(root: str | Path, profile: str = "quick", timeout: float = 3600) -> dict[str, tuple[int, int]]:
    """Run the conformance tests of every task on the package in ``root``, in one fresh
    process; return {task: (passed, total)}."""
    root = Path(root).resolve()
    report = root / ".grade.xml"
    env = dict(os.environ, HYPOTHESIS_PROFILE=profile, PYTHONPATH=os.pathsep.join(
        [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.pop("EAGLE3_IMPL", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "eagle3_ref.testing.conformance",
           "-m", " or ".join(TASKS), f"--junitxml={report}"]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if not report.exists():
        raise RuntimeError(f"the tests did not run (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    scores = {t: [0, 0] for t in TASKS}
    for case in ET.parse(report).getroot().iter("testcase"):
        task = _task_of(case.get("classname", ""))
        if task is None:
            continue
        scores[task][1] += 1
        if not any(child.tag in ("failure", "error", "skipped") for child in case):
            scores[task][0] += 1
    report.unlink()
    uncollected = [t for t, (_, n) in scores.items() if n == 0]
    if uncollected:  # an import error, a broken conftest: a grader must not report 0 / 0
        raise RuntimeError(f"no test of task(s) {uncollected} ran (exit {run.returncode}):\n"
                           f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return {t: (p, n) for t, (p, n) in scores.items()}


def format_scores(scores: dict[str, tuple[int, int]]) -> str:
    rows = [f"{task:10s} {passed:3d} / {total:3d}" for task, (passed, total) in scores.items()]
    passed, total = sum(p for p, _ in scores.values()), sum(n for _, n in scores.values())
    return "\n".join(rows + [f"{'total':10s} {passed:3d} / {total:3d}"])
