"""Course assignments: the skeleton fails every task; with the reference's solution put
back, it passes every task (the round trip the issue asks for), graded by the same
conformance suite."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from eagle3_ref.assignment import PACKAGE, TASKS, grade, strip_solutions
from eagle3_ref.cli import main

pytestmark = pytest.mark.assignment


def test_skeleton_fails_every_task_and_the_solution_passes_every_task(tmp_path, capsys):
    out = tmp_path / "skeleton"
    assert main(["assignment", "make", str(out)]) == 0
    assert "grade.py" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"eagle3_ref", "README.md", "pyproject.toml", "grade.py"}
    fusion = (out / "eagle3_ref/fusion.py").read_text()
    assert "hidden_states[i] for i in layer_ids" not in fusion and 'raise NotImplementedError("fusion: ' in fusion
    assert "# --- assignment" not in "".join(p.read_text() for p in (out / "eagle3_ref").rglob("*.py")
                                             if p.name != "assignment.py")

    solution = tmp_path / "solution"
    shutil.copytree(out, solution)
    for module in ("fusion", "draft_head", "ttt", "tree", "verify", "generate"):  # the reference solution, back
        shutil.copy(PACKAGE / f"{module}.py", solution / f"eagle3_ref/{module}.py")
    with ThreadPoolExecutor(2) as pool:  # two graders, two processes, at once
        skeleton, solved = pool.map(lambda root: grade(root, profile="smoke"), (out, solution))

    assert set(skeleton) == set(TASKS)
    for task, (passed, total) in skeleton.items():
        assert total > 0 and passed == 0, f"{task}: {passed} of {total} tests pass on the skeleton"
    assert solved == skeleton | {t: (n, n) for t, (_, n) in skeleton.items()}, solved


def test_regions_are_replaced_with_their_hint():
    source = ("def f(x):\n"
              "    # --- assignment tree: add one,\n"
              "    #   then \"double\" it.\n"
              "    y = x + 1\n"
              "    return 2 * y\n"
              "    # --- end assignment\n")
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
])
def test_broken_regions_are_named(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source, "f.py")


def test_every_task_has_a_region_in_the_reference():
    found = set()
    for path in PACKAGE.glob("*.py"):
        if path.name != "assignment.py":
            found |= set(strip_solutions(path.read_text(), str(path))[1])
    assert found == set(TASKS)


def test_make_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert main(["assignment", "make", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["assignment", "grade", str(tmp_path)]) == 2
