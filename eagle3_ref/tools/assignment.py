"""Course assignments: a student skeleton of eagle3-ref, graded by the conformance suite.

The core modules mark their solution regions::

    # --- assignment tree: <the hint, wrapped over
    #   continuation lines>
    ...the reference's code...
    # --- end assignment

and what the skeleton must not hold at all (the naive twin of a graded function, the tests
that need it)::

    # --- not in the skeleton: <why>
    ...
    # --- end not in the skeleton

``make(out)`` copies the package with every solution region replaced by
``raise NotImplementedError("tree: <the hint>")`` and every other region removed, leaves
out what would give answers away (:data:`LEFT_OUT`; ``batch.py`` grows trees and builds
their masks for a batch, so it becomes a stub), and adds a README, a ``pyproject.toml``
that installs what the tests need, and ``grade.py``, the students' local check.

``grade(submission)`` is the instructor's grade, and trusts nothing in the submission but
its graded modules (:func:`graded_modules`):

1. For each task, the *installed* reference package is copied under another name and the
   submission's module for that task replaces the reference's; every other module is the
   reference's own. A task's score depends on no other task's answer, and a module that does
   not compile or crashes on import costs its own tasks only.
2. The installed conformance suite runs on that copy (adapter
   :mod:`eagle3_ref.testing.adapters.submission`), one fresh process per task, from a
   directory the grader controls, with a per-test timeout (``--eagle3-test-timeout``). The
   tests, their oracles, the adapter and the pytest plugins come from the installed
   eagle3-ref: a submission's edited tests, conftest or adapter are never on the path.
3. Before the run, the module's imports are compared with the skeleton's: importing the
   reference itself (``eagle3_ref``), a module of the package the skeleton's file does not
   import, or importing by name at run time (``importlib``, ``__import__``, ``sys.modules``,
   ``exec``, ``eval``) is reported, and the task scores 0: its tests would measure the
   reference, not the student.

A hand-in may be a folder, a git clone or a ``.zip``; the graded modules are looked up in
its ``eagle3_ref/`` folder.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from .._checks import check_output_dir

__all__ = ["TASKS", "PROFILES", "LEFT_OUT", "TaskGrade", "strip_solutions", "graded_modules", "make", "grade",
           "grade_many", "write_csv", "check", "format_report", "forbidden_imports",
           "grade_task"]

# In teaching order; each builds on the ones before it (the tree drafts with the head,
# decoding needs fusion, the head, the tree and verification). Graded, each stands alone:
# the reference provides every module but the task's own.
TASKS = ("fusion", "head", "ttt", "tree", "verify", "generate")
PROFILES = ("smoke", "student", "quick", "ci", "dev", "thorough")  # hypothesis profiles (eagle3_ref.testing.plugin)
_BEGIN = re.compile(r"^(?P<indent>\s*)# --- assignment (?P<task>\w+): (?P<hint>.*)$")
_END = "# --- end assignment"
_DROP_BEGIN = re.compile(r"^\s*# --- not in the skeleton: ")
_DROP_END = "# --- end not in the skeleton"
PACKAGE = Path(__file__).resolve().parents[1]  # eagle3_ref/, the package the skeleton copies
# Left out of the skeleton: the toy model (21 MB, unused by the tests), the buggy copies of
# reference functions (each an answer with one bug) and the other engines' adapters.
LEFT_OUT = ("toy_model", "testing/buggy.py", "testing/adapters")
_BATCH_STUB = '''"""Batched decoding (the reference's eagle3_ref/batch.py) is not part of this assignment: its
tree growth and masks for a batch would answer the tree and generate tasks."""


def __getattr__(name):
    raise ImportError(f"eagle3_ref.batch.{name}: batched decoding is not part of this assignment; decode one "
                      "sequence at a time (input_ids of shape (1, T), no attention_mask)")
'''


def strip_solutions(source: str, filename: str = "<source>", keep_solutions: bool = False) -> tuple[str, list[str]]:
    """Replace every solution region of ``source`` and remove every region not in the skeleton;
    return the new text and the tasks found. ``keep_solutions``: leave the solution regions as
    they are (a module as a student who solved it would hand it in: the skeleton's names only)."""
    lines, out, tasks = source.split("\n"), [], []
    i = 0
    while i < len(lines):
        if _DROP_BEGIN.match(lines[i]):
            start = i
            while i < len(lines) and lines[i].strip() != _DROP_END:
                if i > start and (_BEGIN.match(lines[i]) or _DROP_BEGIN.match(lines[i])):
                    raise ValueError(f"{filename}:{i + 1}: a region opens inside a region not in the skeleton")
                i += 1
            if i == len(lines):
                raise ValueError(f"{filename}:{start + 1}: region not in the skeleton is never closed with "
                                 f"{_DROP_END!r}")
            i += 1
            continue
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
            if _BEGIN.match(lines[i]) or _DROP_BEGIN.match(lines[i]):
                raise ValueError(f"{filename}:{i + 1}: an assignment region opens inside another")
            i += 1
        if i == len(lines):
            raise ValueError(f"{filename}:{start}: assignment region {task!r} is never closed with {_END!r}")
        text = " ".join(hint).replace("\\", "\\\\").replace('"', '\\"')
        if keep_solutions:
            out += lines[start:i]
        else:
            out.append(f'{indent}raise NotImplementedError("{task}: {text}")')
        tasks.append(task)
        i += 1
    return "\n".join(out), tasks


def graded_modules(source: str | Path = PACKAGE) -> dict[str, list[str]]:
    """{task: the package's modules (relative paths) that hold its solution regions}."""
    found: dict[str, list[str]] = {t: [] for t in TASKS}
    for path in sorted(Path(source).rglob("*.py")):
        if path.name == "assignment.py" or "__pycache__" in path.parts:
            continue
        for task in dict.fromkeys(strip_solutions(path.read_text(), str(path))[1]):
            found[task].append(str(path.relative_to(source)))
    missing = [t for t, files in found.items() if not files]
    if missing:
        raise ValueError(f"no solution region for task(s) {missing} in {source}")
    return found


_README = """# EAGLE-3, as an assignment

This is eagle3-ref (an educational reference implementation of EAGLE-3 speculative decoding,
arXiv 2503.01840) with the heart of each piece taken out. Every `raise NotImplementedError`
is yours to replace; its message is the hint. Tasks, in order (each builds on the ones before):

{tasks}

Set up, in a fresh virtual environment (this package is called `eagle3_ref`, like the
reference, and brings its test tools, pytest and hypothesis, with it). Install PyTorch
first: without it, pip takes the default build, CUDA's, several gigabytes. On a machine
without a GPU, take PyTorch's CPU-only build (its install page has the command; any
torch >= 2.5 works), then:

    pip install -e .

Run one task's tests, or check them all:

    python -m pytest -m tree
    python grade.py

The tests are eagle3-ref's conformance suite: property-based (hypothesis) proofs against
oracles that are *not* yours to write (transformers' own `generate`, the unrolled drafting
loop, the rules checked on your answer). A failure names the first divergence with both
values and the counterexample hypothesis found.

Your runs use the hypothesis profile `student` (set in `conftest.py`): 10 examples a property,
and a failing one reports the first counterexample it meets and stops, so a first run with
everything red ends in a minute or so. Once a task's tests pass, run them thoroughly, and
when one fails, ask for its smallest counterexample:

    HYPOTHESIS_PROFILE=quick python -m pytest -m tree   # the grader's: 20 examples, shrunk
    HYPOTHESIS_PROFILE=dev python -m pytest -m tree     # 60 examples

`grade.py` is your own check. Your course grades with its own copy of the tests, which
includes tests held back from this skeleton because their oracle would be an answer:
{held_back}
It grades each task on its own, using only your module for that task (the other modules
are the reference's), stops a test that runs longer than its limit (an endless loop), and
counts only the modules listed above: edits anywhere else change nothing.
"""

_CONFTEST = """\"\"\"The skeleton's default hypothesis profile: `student` (see README.md). Set
HYPOTHESIS_PROFILE to choose another (quick, ci, dev, thorough).\"\"\"
import os

os.environ.setdefault("HYPOTHESIS_PROFILE", "student")
"""

_GRADE = """\"\"\"Your local check: the number of each task's tests that pass in this skeleton.\"\"\"
import os
import sys
from pathlib import Path

root = Path(__file__).resolve().parent
sys.path.insert(0, str(root))
from eagle3_ref.tools.assignment import check, format_report  # noqa: E402  (this skeleton's own copy)

grades = check(root, profile=os.environ.get("HYPOTHESIS_PROFILE", "quick"))
print(format_report(grades))
sys.exit(0 if all(g.passed == g.total for g in grades.values()) else 1)
"""

_PYPROJECT = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "eagle3-ref-assignment"
version = "0.1.0"
description = "EAGLE-3 speculative decoding, as an assignment: a skeleton of eagle3-ref"
requires-python = ">=3.10"
# eagle3-ref's own requirements, and the tests' (pytest, hypothesis): `pip install -e .` is enough.
dependencies = [
{dependencies}
]

[project.entry-points.pytest11]
"eagle3_ref.testing.plugin" = "eagle3_ref.testing.plugin"

[tool.setuptools.packages.find]
include = ["eagle3_ref*"]

[tool.pytest.ini_options]
testpaths = ["eagle3_ref/testing/conformance"]
addopts = "-ra --strict-markers"
"""
_TEST_REQUIREMENTS = ("pytest>=8", "hypothesis>=6.100")


def _requirements() -> list[str]:
    """eagle3-ref's base requirements (from its installed metadata), then the tests'."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        base = [r for r in requires("eagle3-ref") or [] if "extra ==" not in r]
    except PackageNotFoundError:  # running from a source tree that was never installed
        import tomllib

        base = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", r, 1)[0].lower() for r in base}
    return base + [r for r in _TEST_REQUIREMENTS if re.split(r"[<>=]", r, 1)[0] not in names]


def _held_back(source: Path) -> list[str]:
    """The conformance tests the skeleton does not get (defined inside regions not in the skeleton)."""
    held = []
    for path in sorted((source / "testing" / "conformance").glob("test_*.py")):
        kept = strip_solutions(path.read_text(), str(path))[0]
        held += [f"{path.stem}::{name}" for name in re.findall(r"(?m)^def (test_\w+)", path.read_text())
                 if f"def {name}(" not in kept]
    return held


def _check_out(out: Path, what: str) -> None:
    check_output_dir(what, out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{what} {out} is not empty")


def make(out: str | Path, source: str | Path = PACKAGE) -> dict[str, list[str]]:
    """Write the skeleton to ``out`` (which must not exist or be empty). Returns
    {file relative to the package: tasks taken out of it}."""
    out, source = Path(out), Path(source)
    _check_out(out, "output directory")
    graded_modules(source)  # every task has its region
    left_out = {source / p for p in LEFT_OUT}
    ignore = lambda folder, names: [n for n in names if n in ("__pycache__", ".hypothesis") or  # noqa: E731
                                    n.endswith(".pyc") or Path(folder) / n in left_out]
    shutil.copytree(source, out / "eagle3_ref", ignore=ignore, dirs_exist_ok=True)
    (out / "eagle3_ref" / "batch.py").write_text(_BATCH_STUB)
    regions: dict[str, list[str]] = {}
    for path in sorted((out / "eagle3_ref").rglob("*.py")):
        if path.name == "assignment.py":  # its docstring shows the markers
            continue
        original = path.read_text()
        text, tasks = strip_solutions(original, str(path))
        if text != original:
            path.write_text(text)
        if tasks:
            regions[str(path.relative_to(out / "eagle3_ref"))] = tasks
    deps = ",\n".join(f'    "{r}"' for r in _requirements())
    (out / "pyproject.toml").write_text(_PYPROJECT.format(dependencies=deps))
    per_task = "\n".join(f"- `{t}`: " + ", ".join(f"`eagle3_ref/{f}`" for f, ts in regions.items() if t in ts)
                         for t in TASKS)
    held = "\n".join(f"- `{name}`" for name in _held_back(source)) or "- none"
    (out / "README.md").write_text(_README.format(tasks=per_task, held_back=held))
    (out / "grade.py").write_text(_GRADE)
    (out / "conftest.py").write_text(_CONFTEST)  # loaded before the suite's own conftest reads the profile
    return regions


# ----------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------


class TaskGrade(NamedTuple):
    """One task's grade: tests passed of ``total``; each failed test with the first line of
    its message (and where in the student's module it was raised); ``problem``: why the
    tests did not run at all (the module is missing, does not compile, imports the reference)."""

    passed: int
    total: int
    failures: tuple[tuple[str, str], ...] = ()
    problem: str | None = None


def _task_of(classname: str) -> str | None:
    task = classname.split(".")[-1].removeprefix("test_")  # ...conformance.test_tree -> tree
    return task if task in TASKS else None


def _read_junit(report: Path, package_names: tuple[str, ...] = (), task: str | None = None
                ) -> dict[str, list[tuple[str, str | None]]]:
    """{task: [(test, None if it passed else the first line of why)]} from a junit file; ``task``:
    the one task of a run whose test ids name no module (the tests lie outside its rootdir)."""
    results: dict[str, list[tuple[str, str | None]]] = {t: [] for t in TASKS}
    for case in ET.parse(report).getroot().iter("testcase"):
        this = _task_of(case.get("classname", "")) or task
        if this is None:
            continue
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        why = None
        if bad is not None:
            message = (bad.get("message") or bad.text or bad.tag).strip()
            why = message.split("\n")[0].removeprefix("AssertionError: ")[:300] or bad.tag
            why = re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", why)  # eagle3_ref.testing.plugin.TestTimedOut: -> TestTimedOut:
            for name in package_names:  # where in the student's module: the deepest frame there
                spots = re.findall(rf"{re.escape(name)}[/\\](\w+\.py):(\d+)", bad.text or "")
                if spots:
                    why += f" [{spots[-1][0]} line {spots[-1][1]}]"
                    break
        results[this].append((case.get("name", "?"), why))
    return results


def _pytest(args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k != "EAGLE3_IMPL"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + args, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def check(root: str | Path, profile: str = "quick", test_timeout: float = 120.0,
          timeout: float = 3600) -> dict[str, TaskGrade]:
    """The students' local check (``grade.py`` in the skeleton): the package's own tests of every
    task on the package in ``root``, in one fresh process. Not a grade: the course grades with
    :func:`grade`, from its own copy of the tests."""
    _check_profile(profile)
    root = Path(root).resolve()
    report = root / ".check.xml"
    env = dict(os.environ, HYPOTHESIS_PROFILE=profile, PYTHONPATH=os.pathsep.join(
        [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    run = _pytest(["--pyargs", "eagle3_ref.testing.conformance", "-m", f"({' or '.join(TASKS)}) and not ungraded",
                   f"--eagle3-test-timeout={test_timeout:g}", f"--junitxml={report}"], root, env, timeout)
    if not report.exists():
        raise RuntimeError(f"the tests did not run (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    results = _read_junit(report)
    report.unlink()
    return {t: TaskGrade(sum(why is None for _, why in rows), len(rows),
                         tuple((name, why) for name, why in rows if why is not None)) for t, rows in results.items()}


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not a hypothesis profile of the suite (one of {', '.join(PROFILES)})")


def _check_options(profile: str, test_timeout: float, jobs: int | None, timeout: float) -> None:
    _check_profile(profile)
    if not (test_timeout > 0 and timeout > 0):
        raise ValueError(f"test_timeout and timeout must be positive seconds, got {test_timeout} and {timeout}")
    if jobs is not None and not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")


def _find_package(root: Path) -> Path:
    """The folder that holds the graded modules in a hand-in: ``eagle3_ref/`` at its top, or one
    folder down (a zip of the skeleton's folder), or the top itself (a zip of the package)."""
    files = {f for fs in graded_modules().values() for f in fs}
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for candidate in [root / "eagle3_ref", root] + [c / "eagle3_ref" for c in children] + children:
        if candidate.is_dir() and any((candidate / f).is_file() for f in files):
            return candidate
    raise ValueError(f"{root}: no eagle3_ref package with any of the graded modules ({', '.join(sorted(files))})")


def _reaches(node: ast.AST) -> set[tuple]:
    """What one syntax node reaches for: imports as (level, module, name), and run-time lookups."""
    if isinstance(node, ast.Import):
        return {(0, alias.name, None) for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        return {(node.level, node.module or "", alias.name) for alias in node.names}
    if isinstance(node, ast.Name) and node.id in ("__import__", "exec", "eval"):
        return {("lookup", node.id, None)}
    if isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name) \
            and node.value.id == "sys":
        return {("lookup", "sys.modules", None)}
    return set()


# CPython 3.11 keeps the AST constructor's recursion depth in state that all threads share, so
# two tasks parsing at once in `grade`'s threads can fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905; it failed this project's CI once). Parse one
# module at a time.
_PARSE_LOCK = threading.Lock()


def _parse(source: str) -> ast.Module:
    with _PARSE_LOCK:
        return ast.parse(source)


def forbidden_imports(student: str, skeleton: str) -> list[str]:
    """Where the submission's module reaches beyond what the skeleton's version of it does: the
    reference itself, other modules of the package, modules looked up by name at run time."""
    allowed = set().union(*map(_reaches, ast.walk(_parse(skeleton))))
    bad = []
    for node in ast.walk(_parse(student)):
        for level, module, name in sorted(_reaches(node) - allowed, key=str):
            what = f"{'.' * level if isinstance(level, int) else ''}{module}" + (f" ({name})" if name else "")
            if level == "lookup":
                bad.append(f"line {node.lineno}: {module} (a module looked up by name at run time)")
            elif level > 0:
                bad.append(f"line {node.lineno}: imports {what}, which the skeleton's module does not")
            elif module.split(".")[0] in ("eagle3_ref", "importlib"):
                bad.append(f"line {node.lineno}: imports {what}")
    return list(dict.fromkeys(bad))


def grade_task(task: str, files: list[str], package: Path, work: Path, profile: str, test_timeout: float,
                timeout: float, threads: int | None) -> TaskGrade:
    """One task: the reference package under another name with the submission's modules for
    ``task`` in it, the installed tests in a fresh process. A module that is missing, does not
    compile or reaches past the skeleton scores 0 without a run, with the reason."""
    problems = []
    for f in files:
        if not (package / f).is_file():
            problems.append(f"missing eagle3_ref/{f}")
            continue
        try:
            reaches = forbidden_imports((package / f).read_text(errors="replace"),
                                         strip_solutions((PACKAGE / f).read_text(), f)[0])
        except SyntaxError as err:
            problems.append(f"{f} does not compile: {type(err).__name__}: {err.msg} (line {err.lineno})")
            continue
        if reaches:
            problems.append(f"{f} uses code the assignment does not give, so its tests would not measure the "
                            "student's: " + "; ".join(reaches))
    if problems:
        return TaskGrade(0, _total(task), (), "; ".join(problems))
    name = f"eagle3_graded_{task}"
    copy = work / task / name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "toy_model", "testing"))
    # The other modules as the skeleton has them, solved: without what the skeleton holds back, so
    # that none imports a name only the reference's version of a graded module has (the package's
    # __init__ imported tree.build_draft_tree_naive: the first tree test of every hand-in failed).
    for path in copy.rglob("*.py"):
        if path.name != "assignment.py":  # its docstring shows the markers
            path.write_text(strip_solutions(path.read_text(), str(path), keep_solutions=True)[0])
    (copy / "batch.py").write_text(_BATCH_STUB)
    for f in files:
        shutil.copy(package / f, copy / f)
    (work / task / "pytest.ini").write_text("[pytest]\naddopts =\n")
    report = work / task / "report.xml"
    env = dict(os.environ, HYPOTHESIS_PROFILE=profile, EAGLE3_SUBMISSION_PACKAGE=name, PYTHONPATH=os.pathsep.join(
        [str(work / task)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    if threads:  # tasks graded side by side: torch's threads would fight over the cores (2.5x slower measured)
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        run = _pytest(["-c", str(work / task / "pytest.ini"), "--rootdir", str(work / task),
                       "--pyargs", f"eagle3_ref.testing.conformance.test_{task}", "-m", f"{task} and not ungraded",
                       "--eagle3-impl=eagle3_ref.testing.adapters.submission", f"--eagle3-test-timeout={test_timeout:g}",
                       f"--junitxml={report}"], work / task, env, timeout)
    except subprocess.TimeoutExpired:
        return TaskGrade(0, _total(task), (), f"grading stopped after {timeout:g} s")
    rows = _read_junit(report, (name,), task)[task] if report.exists() else []
    if not rows:
        tail = " / ".join((run.stdout + run.stderr).strip().splitlines()[-3:])
        return TaskGrade(0, _total(task), (), f"its tests did not run (pytest exit {run.returncode}: {tail})")
    failures = tuple((test, why) for test, why in rows if why is not None)
    return TaskGrade(len(rows) - len(failures), len(rows), failures)


_TOTALS: dict[str, int] = {}
_TOTALS_LOCK = threading.Lock()


def _total(task: str) -> int:
    """How many tests the task has (collected once per process from the installed suite)."""
    with _TOTALS_LOCK:
        if not _TOTALS:
            _TOTALS.update(_collect_totals())
    return _TOTALS.get(task, 0)


def _collect_totals() -> dict[str, int]:
    """{task: number of tests} from a collection of the installed suite."""
    totals: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pytest.ini").write_text("[pytest]\naddopts =\n")
        run = _pytest(["-c", str(Path(tmp) / "pytest.ini"), "--rootdir", tmp, "--collect-only",
                       "--pyargs", "eagle3_ref.testing.conformance", "-m", f"({' or '.join(TASKS)}) and not ungraded"],
                      Path(tmp), dict(os.environ), 600)
    for line in run.stdout.splitlines():
        m = re.search(r"test_(\w+)\.py::", line)
        if m and m.group(1) in TASKS:
            totals[m.group(1)] = totals.get(m.group(1), 0) + 1
    return totals


def grade(submission: str | Path, profile: str = "quick", test_timeout: float = 120.0, jobs: int | None = None,
          timeout: float = 3600) -> dict[str, TaskGrade]:
    """Grade a hand-in (a folder, a git clone or a ``.zip``) against the installed eagle3-ref's
    own tests, each task on its own (see the module's docstring); return {task: TaskGrade}.

    ``test_timeout``: seconds before one test is stopped and failed; ``timeout``: seconds for one
    task's whole run; ``jobs``: tasks graded at once (default: one per CPU core)."""
    _check_options(profile, test_timeout, jobs, timeout)
    submission = Path(submission)
    if not submission.exists():
        raise ValueError(f"no such submission: {submission}")
    tasks = graded_modules()
    with tempfile.TemporaryDirectory(prefix="eagle3-grade-") as tmp:
        work = Path(tmp)
        if submission.is_file():
            if not zipfile.is_zipfile(submission):
                raise ValueError(f"{submission} is neither a folder nor a zip file")
            with zipfile.ZipFile(submission) as z:
                z.extractall(work / "handin")
            submission = work / "handin"
        package = _find_package(submission)
        jobs = jobs or min(len(TASKS), os.cpu_count() or 1)
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
        with ThreadPoolExecutor(jobs) as pool:
            grades = pool.map(lambda t: grade_task(t, tasks[t], package, work, profile, test_timeout, timeout,
                                                    threads), TASKS)
            return dict(zip(TASKS, grades))


def grade_many(folder: str | Path, profile: str = "quick", test_timeout: float = 120.0, jobs: int | None = None,
               timeout: float = 3600) -> dict[str, dict[str, TaskGrade]]:
    """Grade every hand-in in ``folder`` (each sub-folder or ``.zip`` is one student, named by it),
    one after the other; a hand-in that cannot be graded at all scores 0 with the reason.
    Arguments as :func:`grade`."""
    _check_options(profile, test_timeout, jobs, timeout)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of submissions")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".zip"))
    if not entries:
        raise ValueError(f"{folder} holds no submissions (sub-folders or .zip files)")
    out = {}
    for entry in entries:
        name = entry.stem if entry.suffix == ".zip" else entry.name
        try:
            out[name] = grade(entry, profile, test_timeout, jobs, timeout)
        except (ValueError, zipfile.BadZipFile) as err:
            out[name] = {t: TaskGrade(0, _total(t), (), str(err)) for t in TASKS}
    return out


def write_csv(grades: dict[str, dict[str, TaskGrade]], path: str | Path) -> None:
    """One row per student: tests passed per task, the total, out of how many, and any problems."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--csv {path} is a directory, not a file")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", *TASKS, "total", "out_of", "problems"])
        for student, per_task in grades.items():
            w.writerow([student, *(per_task[t].passed for t in TASKS), sum(g.passed for g in per_task.values()),
                        sum(g.total for g in per_task.values()),
                        " | ".join(f"{t}: {g.problem}" for t, g in per_task.items() if g.problem)])


def format_report(grades: dict[str, TaskGrade]) -> str:
    """A score per task, then what failed and why, in words a student can act on."""
    rows = [f"{task:10s} {g.passed:3d} / {g.total:3d}" for task, g in grades.items()]
    passed, total = sum(g.passed for g in grades.values()), sum(g.total for g in grades.values())
    rows.append(f"{'total':10s} {passed:3d} / {total:3d}")
    for task, g in grades.items():
        if g.problem:
            rows.append(f"\n{task}: not run: {g.problem}")
        elif g.failures:
            rows.append(f"\n{task}: failed")
            rows += [f"  {test}: {why}" for test, why in g.failures]
    return "\n".join(rows)
