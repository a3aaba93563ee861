"""Course assignments: a skeleton that installs and runs, grading a course can trust.

Proofs: the skeleton installs in a fresh virtual environment and its README's commands run
there, failing every local test of every task; two hand-ins graded as a class (a folder
with a git history, a zip) score exactly what their modules earn: edited tests, conftest
and adapter change nothing, a syntax error costs its own task only, an endless loop fails
its test within the per-test timeout and the next tests still run, importing the reference
scores 0 and is reported, and the reference's own modules score full marks; no text of a
solution region, and no naive twin of a graded function, is left in the skeleton.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from eagle3_ref.cli import main
from eagle3_ref.tools.assignment import PACKAGE, TASKS, forbidden_imports, graded_modules, make, strip_solutions

pytestmark = pytest.mark.assignment
MODULE = {"fusion": "fusion", "head": "draft_head", "ttt": "ttt", "tree": "tree", "verify": "verify",
          "generate": "generate"}
LOOP_AT = "    best = target_logits.argmax(-1).tolist()\n"  # the first line of verify_greedy's solution


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout") / "hw"
    assert main(["assignment", "make", str(out)]) == 0
    return out


def _solved(skeleton: Path, dest: Path, tasks) -> Path:
    """The skeleton with ``tasks`` solved as a student hands them in: the reference's solution in
    each region, and nothing the skeleton holds back (no naive twin)."""
    shutil.copytree(skeleton, dest)
    for task in tasks:
        module = f"{MODULE[task]}.py"
        (dest / "eagle3_ref" / module).write_text(strip_solutions((PACKAGE / module).read_text(), module,
                                                                  keep_solutions=True)[0])
    return dest


def test_a_solved_tree_scores_full_marks_and_an_untouched_one_its_own_failure(skeleton, tmp_path):
    # The grader's package once imported tree.build_draft_tree_naive (held back from the
    # skeleton) in its __init__: a solved tree lost the test that ran first (3 of 4, an
    # ImportError), and the untouched one was reported as hypothesis's "FlakyFailure:
    # Inconsistent results from replaying a test case!" instead of its own NotImplementedError.
    from eagle3_ref.tools.assignment import grade_task

    solved = _solved(skeleton, tmp_path / "solved", ["tree"])
    files = graded_modules()["tree"]
    good = grade_task("tree", files, solved / "eagle3_ref", tmp_path / "w1", "smoke", 60.0, 600.0, None)
    assert good.problem is None and good.passed == good.total > 0, good
    bad = grade_task("tree", files, skeleton / "eagle3_ref", tmp_path / "w2", "smoke", 60.0, 600.0, None)
    assert bad.passed == 0 < bad.total and bad.failures, bad
    for test, why in bad.failures:
        assert why.startswith("NotImplementedError: tree: ") and "[tree.py line" in why, (test, why)


def test_the_skeleton_installs_in_a_fresh_venv_and_its_readme_commands_run(skeleton, tmp_path):
    # The skeleton's README said `pip install -e .` then pytest; pytest was only in the
    # reference's [dev] extra, so a fresh environment could not run a single test. Two venvs:
    # an empty one, where pip resolves everything `pip install -e .` brings (pytest and
    # hypothesis included) without installing it (gigabytes of torch, a minute); and one that
    # sees this machine's packages, where the README's commands run as written.
    readme = (skeleton / "README.md").read_text()
    # pip's default torch is CUDA's (5.7 GB, 142 s measured): the README says to take a CPU build first
    assert readme.index("PyTorch's CPU-only build") < readme.index("pip install -e .")
    commands = re.findall(r"(?m)^    (pip .+|python .+)$", readme)
    assert commands == ["pip install -e .", "python -m pytest -m tree", "python grade.py"], commands
    torch_version = __import__("torch").__version__.split("+")[0]
    (tmp_path / "constraints.txt").write_text(f"torch=={torch_version}\n")  # the CPU wheel, as CI installs it
    empty, seeing = tmp_path / "empty", tmp_path / "seeing"
    subprocess.run([sys.executable, "-m", "venv", str(empty)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(seeing)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONSTRAINT": str(tmp_path / "constraints.txt"),
        "HYPOTHESIS_PROFILE": "smoke"}
    default_profile = {k: v for k, v in env.items() if k != "HYPOTHESIS_PROFILE"}
    dry = subprocess.Popen([str(empty / "bin" / "pip"), "install", "--dry-run", "--quiet", "--report",
                            str(tmp_path / "would.json"), "-e", str(skeleton)], env=env, stdout=subprocess.DEVNULL,
                           stderr=(tmp_path / "dry.log").open("w"))  # meanwhile, the commands
    # The student's first runs with the skeleton's own default profile (`student`, from its
    # conftest.py): all red, and over in seconds (the `ci` default took over 25 minutes on the
    # fusion task, shrinking and explaining every failure).
    path = {"PATH": f"{seeing / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    runs, seconds = [], []
    for c in commands + ["python -m pytest -m fusion"]:
        start = time.perf_counter()
        runs.append(subprocess.run(c.split(), env=(default_profile if "pytest" in c else env) | path,
                                   cwd=skeleton, capture_output=True, text=True, timeout=600))
        seconds.append(time.perf_counter() - start)
    fusion_run = runs.pop()
    assert fusion_run.returncode == 1 and " passed" not in fusion_run.stdout, fusion_run.stdout[-2000:]
    pytest_seconds = [s for c, s in zip(commands + ["-m fusion"], seconds) if "-m " in c]
    assert max(pytest_seconds) < 60, f"the all-red first runs took {pytest_seconds} s"
    assert runs[0].returncode == 0, runs[0].stderr[-3000:]
    assert dry.wait() == 0, (tmp_path / "dry.log").read_text()[-3000:]
    would = {i["metadata"]["name"].lower() for i in json.loads((tmp_path / "would.json").read_text())["install"]}
    assert {"pytest", "hypothesis", "torch", "transformers", "safetensors", "eagle3-ref-assignment"} <= would, would
    tree_run, grade_run = runs[1], runs[2]
    assert tree_run.returncode == 1 and "NotImplementedError: " in tree_run.stdout, tree_run.stdout[-3000:]
    assert re.search(r"\d+ failed", tree_run.stdout) and " passed" not in tree_run.stdout, tree_run.stdout[-2000:]
    # grade.py, the local check: every task's tests fail on the skeleton (each test needs its region)
    assert grade_run.returncode == 1, grade_run.stdout + grade_run.stderr[-3000:]
    scores = dict(re.findall(r"(?m)^(\w+)\s+(\d+ /\s+\d+)$", grade_run.stdout))
    for task in TASKS:
        passed, total = map(int, scores[task].split("/"))
        assert passed == 0 < total, f"{task}: {scores[task]} on the skeleton\n{grade_run.stdout}"


def test_a_class_is_graded_on_pristine_tests_task_by_task(skeleton, tmp_path, capsys):
    hand_ins = tmp_path / "class"
    hand_ins.mkdir()
    # Ann hands in a git clone: fusion, ttt and generate right; head untouched, but every test
    # file replaced by `pass`, a conftest that passes every test, and the adapter edited; tree
    # right but for a syntax error; verify right but greedy verification loops forever.
    ann = _solved(skeleton, hand_ins / "ann", ["fusion", "ttt", "tree", "verify", "generate"])
    subprocess.run(["git", "init", "-q", str(ann)], check=True)
    for test in (ann / "eagle3_ref" / "testing" / "conformance").glob("test_*.py"):
        test.write_text(f"import pytest\npytestmark = pytest.mark.{test.stem.removeprefix('test_')}\n\n"
                        "def test_ok():\n    pass\n")
    cheat = ("import pytest\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
             "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n")
    (ann / "conftest.py").write_text(cheat)
    (ann / "eagle3_ref" / "testing" / "conformance" / "conftest.py").write_text(cheat)
    adapter = ann / "eagle3_ref" / "testing" / "adapter.py"
    assert '_module(self, "draft_head")' in adapter.read_text()  # the head made by the reference instead
    adapter.write_text(adapter.read_text().replace('_module(self, "draft_head")', '_module(None, "draft_head")'))
    with (ann / "eagle3_ref" / "tree.py").open("a") as f:
        f.write("\n\ndef broken(:\n    pass\n")
    verify = ann / "eagle3_ref" / "verify.py"
    endless = "    global _CALLS\n    _CALLS = globals().get('_CALLS', 0) + 1\n    while _CALLS == 1:\n        pass\n"
    verify.write_text(verify.read_text().replace(LOOP_AT, endless + LOOP_AT, 1))  # on its first call only
    # Carl zips a folder holding only tree.py, the reference's, borrowing the batch builder.
    carl = tmp_path / "carl" / "eagle3_ref"
    carl.mkdir(parents=True)
    (carl / "tree.py").write_text((PACKAGE / "tree.py").read_text() + "\nfrom .batch import build_draft_trees\n")
    with zipfile.ZipFile(hand_ins / "carl.zip", "w") as z:
        z.write(carl / "tree.py", "carl/eagle3_ref/tree.py")

    out = tmp_path / "grades.csv"
    code = main(["assignment", "grade", "--many", str(hand_ins), "--csv", str(out), "--profile", "smoke",
                 "--test-timeout", "15", "--jobs", "2"])
    assert code == 0
    report = capsys.readouterr().out
    rows = {row["student"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"ann", "carl"}
    ann_row, carl_row = rows["ann"], rows["carl"]
    ann_report = report[report.index("== ann"):report.index("== carl")]
    totals = dict(re.findall(r"(?m)^(\w+)\s+\d+ /\s+(\d+)$", ann_report))
    # What each module earns: full marks where right, and nothing from the tests, conftest
    # and adapter edited beside an untouched module.
    for task in ("fusion", "ttt", "generate"):
        assert int(ann_row[task]) == int(totals[task]) > 0, (task, ann_row)
    assert int(ann_row["head"]) == 0 < int(totals["head"]), ann_row
    # A syntax error costs its own task, named with its line.
    assert int(ann_row["tree"]) == 0 < int(totals["tree"])
    assert re.search(r"tree: not run: tree\.py does not compile: SyntaxError: .* \(line \d+\)", ann_report), ann_report
    # The endless loop (on verify_greedy's first call) fails that test within the per-test
    # timeout, named with the line it was stopped at; the process goes on: the next tests pass.
    stopped = re.findall(r"(?m)^  (test_\w+): TestTimedOut: stopped after 15 s .*endless loop.*\[verify\.py line \d+\]$",
                         ann_report)
    assert len(stopped) == 1 and stopped[0].startswith("test_greedy_"), ann_report
    assert int(ann_row["verify"]) == int(totals["verify"]) - 1, ann_row
    # Carl: borrowing code the skeleton does not give scores 0 and is reported; a module not
    # handed in is named.
    assert int(carl_row["total"]) == 0 and int(carl_row["out_of"]) == int(ann_row["out_of"]), carl_row
    assert "tree: tree.py uses code the assignment does not give" in carl_row["problems"], carl_row
    assert "imports .batch (build_draft_trees)" in carl_row["problems"]
    assert "fusion: missing eagle3_ref/fusion.py" in carl_row["problems"]


def test_the_skeleton_holds_no_solution_text_and_no_naive_twin(skeleton):
    files = {p: p.read_text() for p in skeleton.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml")}
    text = "\n".join(t for p, t in files.items() if p.name != "assignment.py")
    solution, outside = set(), set()  # lines of solution regions; lines anywhere else in the reference
    for path in sorted(PACKAGE.rglob("*.py")):
        region = None
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith("# --- assignment ") or s.startswith("# --- not in the skeleton"):
                region = s.split(":")[0]
            elif s in ("# --- end assignment", "# --- end not in the skeleton"):
                region = None
            elif len(s) >= 30 and not s.startswith("#"):
                (solution if region == "# --- assignment" else outside if region is None else set()).add(s)
    leaked = sorted(s for s in solution - outside if s in text)
    assert not leaked, "solution text in the skeleton:\n" + "\n".join(leaked[:20])
    for twin in ("build_draft_tree_naive", "verify_greedy_naive"):
        assert twin not in text, f"{twin}, a naive twin of a graded function, is in the skeleton"
    assert not (skeleton / "eagle3_ref" / "testing" / "buggy.py").exists()
    assert "is not part of this assignment" in (skeleton / "eagle3_ref" / "batch.py").read_text()


def test_a_graded_module_may_not_reach_past_the_skeleton():
    tree = (PACKAGE / "tree.py").read_text()
    skeleton = strip_solutions(tree, "tree.py")[0]
    assert forbidden_imports(tree, skeleton) == []  # the reference's own module reaches for nothing more
    assert forbidden_imports(skeleton + "\nimport math\nfrom collections import deque\n", skeleton) == []
    for extra, said in [("from .batch import build_draft_trees", "imports .batch (build_draft_trees)"),
                        ("import eagle3_ref.tree", "imports eagle3_ref.tree"),
                        ("from eagle3_ref import tree", "imports eagle3_ref (tree)"),
                        ("import importlib", "imports importlib"),
                        ("m = sys.modules['eagle3_ref']", "sys.modules"),
                        ("m = __import__('eagle3_ref')", "__import__")]:
        found = forbidden_imports(skeleton + "\n" + extra + "\n", skeleton)
        assert len(found) == 1 and said in found[0], (extra, found)


def test_the_grading_threads_parse_one_module_at_a_time(tmp_path, monkeypatch):
    """CPython 3.11's AST constructor shares its recursion depth between threads: two tasks parsing
    at once failed CI with "AST constructor recursion depth mismatch". A hand-in whose every module
    reaches past the skeleton is graded from its syntax alone, with all tasks at once."""
    import ast
    import time

    from eagle3_ref.tools import assignment

    inside, overlaps, parse = [0], [], ast.parse

    def slow_parse(source, *args, **kwargs):
        inside[0] += 1
        overlaps.append(inside[0])
        time.sleep(0.02)  # hold the parse long enough for another thread to walk in
        try:
            return parse(source, *args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    package = tmp_path / "handin" / "eagle3_ref"
    package.mkdir(parents=True)
    for files in graded_modules().values():
        for f in files:
            (package / f).write_text((PACKAGE / f).read_text() + "\nimport importlib\n")
    grades = assignment.grade(tmp_path / "handin", jobs=len(TASKS))
    assert all(g.passed == 0 and "imports importlib" in g.problem for g in grades.values()), grades
    assert overlaps and max(overlaps) == 1, "two threads were inside ast.parse at once"


def test_regions_are_replaced_with_their_hint_or_removed():
    source = ("def f(x):\n"
              "    # --- assignment tree: add one,\n"
              "    #   then \"double\" it.\n"
              "    y = x + 1\n"
              "    return 2 * y\n"
              "    # --- end assignment\n"
              "# --- not in the skeleton: a twin\n"
              "def f_naive(x):\n"
              "    return 2 * (x + 1)\n"
              "# --- end not in the skeleton\n")
    text, tasks = strip_solutions(source)
    assert tasks == ["tree"]
    assert text == 'def f(x):\n    raise NotImplementedError("tree: add one, then \\"double\\" it.")\n'
    with pytest.raises(NotImplementedError, match='tree: add one, then "double" it'):
        namespace = {}
        exec(text, namespace)
        namespace["f"](1)


@pytest.mark.parametrize("source, message", [
    ("    # --- assignment sorting: x\n    pass\n    # --- end assignment\n", "unknown assignment task 'sorting'"),
    ("    # --- assignment tree: x\n    pass\n", "never closed"),
    ("# --- assignment tree: x\n# --- assignment verify: y\n# --- end assignment\n", "inside another"),
    ("# --- not in the skeleton: x\npass\n", "never closed"),
    ("# --- not in the skeleton: x\n# --- assignment tree: y\n# --- end assignment\n# --- end not in the skeleton\n",
     "inside a region not in the skeleton"),
])
def test_broken_regions_are_named(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source, "f.py")


def test_every_task_has_a_region_in_the_reference():
    assert graded_modules() == {t: [f"{MODULE[t]}.py"] for t in TASKS}


def test_bad_arguments_are_named(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert main(["assignment", "make", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["assignment", "make", str(tmp_path / "x")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    for args, said in [([str(tmp_path)], "no eagle3_ref package"),
                       ([str(tmp_path / "x")], "neither a folder nor a zip"),
                       ([str(tmp_path / "nope")], "no such submission"),
                       ([str(tmp_path), "--profile", "bogus"], "profile 'bogus' is not a hypothesis profile"),
                       ([str(tmp_path), "--csv", "out.csv"], "--csv needs --many"),
                       ([str(tmp_path), "--many"], "holds no submissions"),
                       ([str(tmp_path), "--jobs", "0"], "jobs must be an int >= 1, got 0"),
                       ([str(tmp_path), "--many", "--test-timeout", "0"], "must be positive seconds")]:
        assert main(["assignment", "grade"] + args) == 2, args
        assert said in capsys.readouterr().err, args
    with pytest.raises(ValueError, match="is a file"):
        make(tmp_path / "x")
