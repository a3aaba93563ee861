"""Code in docs/ runs (small settings) and the README's claims match the code.

Every fenced block in README.md and docs/*.md is one of: ``python`` (executed here, page by
page; ``print(...)  # -> OUTPUT`` lines must print exactly OUTPUT), ``bash`` (every command is
checked: ``eagle3-ref`` lines parse with the real CLI parser, pytest lines name real packages,
markers, adapters and profiles, the set-up is what CI runs, and so on; a command with no check
fails), or ``text`` (output shown, not code). A bare fence or another language fails.
"""

import contextlib
import importlib.util
import io
import os
import re
import shlex
from pathlib import Path

import pytest

import eagle3_ref

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(path: Path, language: str | None = None) -> list[str]:
    found = [(m.group(1).split()[0] if m.group(1).strip() else "", m.group(2)) for m in FENCE.finditer(path.read_text())]
    return [code for lang, code in found if language is None or lang == language]


def test_every_block_has_a_known_kind():
    bad = [(p.name, m.group(1) or "(bare)") for p in PAGES for m in FENCE.finditer(p.read_text())
           if (m.group(1).split() or [""])[0] not in ("python", "bash", "text")]
    assert bad == []


EXPECT = re.compile(r"^(\s*)print\((.*)\)\s+# -> (.*)$")


def _printed(expected: str, *values) -> None:
    line = " ".join(str(v) for v in values)
    print(line)
    assert line == expected, f"the page says this prints {expected!r}, it printed {line!r}"


def checked(code: str) -> str:
    """``print(a, b)  # -> OUTPUT`` becomes a check that exactly OUTPUT is printed."""
    return "\n".join(EXPECT.sub(lambda m: f"{m.group(1)}_printed({m.group(3)!r}, {m.group(2)})", line)
                     for line in code.split("\n"))


PYTHON_PAGES = [p for p in PAGES if blocks(p, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[p.name for p in PYTHON_PAGES])
def test_python_samples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"_printed": _printed, "__name__": "__docs__"}
    for i, code in enumerate(blocks(page, "python")):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(checked(code), f"{page.name} python block {i + 1}", "exec"), namespace)


def test_the_output_checks_can_fail():
    with pytest.raises(AssertionError, match="the page says"):
        exec(checked("print(1 + 1)  # -> 3"), {"_printed": _printed})


def commands(code: str) -> list[str]:
    joined = code.replace("\\\n", " ")
    return [part.strip() for line in joined.split("\n") for part in line.split("&&")
            if shlex.split(part, comments=True)]


BASH = sorted({(p.name, c) for p in PAGES for code in blocks(p, "bash") for c in commands(code)})


def _parse_cli(words: list[str]) -> None:
    from eagle3_ref.cli import build_parser

    try:
        build_parser().parse_args(words)
    except SystemExit as exit:  # argparse: 0 for --help, 2 for a bad argument
        assert exit.code == 0 and "--help" in words, f"eagle3-ref {shlex.join(words)}: not a valid command line"


def _placeholders(word: str) -> str:
    """The docs' placeholder adapter becomes the reference's own."""
    return word.replace("my_package.my_adapter", "eagle3_ref.testing.adapter").replace(":NAME", ":ADAPTER")


def _check_pytest(args: list[str], env: dict) -> None:
    """Every option of a documented pytest line is real: the packages import, the markers are
    registered (by the plugin, or pyproject for the repository's suite), the adapter loads.
    (Collecting each would cost 10 s a line; tests/test_oracle.py runs such lines for real.)"""
    import tomllib

    from eagle3_ref.testing.adapter import ENV_VAR, load_adapter
    from eagle3_ref.testing.plugin import CONFORMANCE_MARKERS, load_profile

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = set(CONFORMANCE_MARKERS) | {m.split(":")[0] for m in pyproject["markers"]}
    if env.get(ENV_VAR) != os.environ.get(ENV_VAR):
        load_adapter(env[ENV_VAR])
    if "HYPOTHESIS_PROFILE" in env:
        from hypothesis import settings

        load_profile()  # registers the suite's profiles
        try:
            settings.get_profile(env["HYPOTHESIS_PROFILE"])
        except Exception as err:
            raise AssertionError(f"HYPOTHESIS_PROFILE: {err}") from None
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if word == "--pyargs":
            assert importlib.util.find_spec(rest.pop(0)) is not None
        elif word == "-m":
            unknown = set(re.findall(r"\w+", rest.pop(0))) - markers - {"and", "or", "not"}
            assert not unknown, f"pytest -m: no such marker {sorted(unknown)}"
        elif word.startswith("--eagle3-impl="):
            load_adapter(_placeholders(word.split("=", 1)[1]))
        else:
            raise AssertionError(f"pytest option {word!r}: no check for it here")


def check_command(line: str) -> None:
    words = shlex.split(line, comments=True)
    env = dict(os.environ)
    while "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
        name, _, value = words.pop(0).partition("=")
        env[name] = _placeholders(value)
        assert name in ("EAGLE3_IMPL", "HYPOTHESIS_PROFILE"), f"unknown environment variable {name}"
    if words[0] == "eagle3-ref":
        _parse_cli([w.strip("[]") for w in words[1:]])  # a synopsis' [optional] parts are checked too
    elif words[0] == "torchrun":
        _parse_cli(words[words.index("eagle3_ref.cli") + 1:])
    elif words[:3] == ["python", "-m", "pytest"]:
        _check_pytest(words[3:], env)
    elif words[:3] == ["python", "-m", "eagle3_ref.testing.mutants"]:
        from eagle3_ref.testing.mutants import parser

        parser().parse_args(words[3:])
    elif words[:2] == ["python", "-c"]:
        compile(words[2], line, "exec")
    elif words[0] == "cd" or words[:2] == ["python", "grade.py"]:
        assert "grade.py" in (ROOT / "tests" / "test_assignment.py").read_text()  # run there, in a skeleton
    elif words[:2] == ["pip", "install"]:  # only the set-up CI itself runs
        ci = [shlex.split(l, comments=True)[3:] for l in (ROOT / ".ci" / "run").read_text().splitlines()
              if l.startswith("python -m pip install")]
        assert words[1:] in [[w for w in c if w not in ("-q", "--disable-pip-version-check")] for c in ci], line
    elif words[0] == "python" and words[1].startswith("docs/examples/"):  # an example script, run by a test here
        assert (ROOT / words[1]).is_file(), line
        assert Path(words[1]).stem in Path(__file__).read_text(), f"no test runs {words[1]}"
    elif words[0] == "mkdocs":
        assert words[1:] == ["build", "--strict", "-f", "docs/mkdocs/mkdocs.yml"], line
        assert '"build", "--strict", "-f", str(CONFIG)' in (ROOT / "tests" / "test_site.py").read_text()
    else:
        raise AssertionError(f"no check for this documented command: {line}")


@pytest.mark.parametrize("page,line", BASH, ids=[f"{p}:{c[:40]}" for p, c in BASH])
def test_shell_commands_are_valid(page, line):
    check_command(line)


@pytest.mark.parametrize("line", ["eagle3-ref demo --no-such-option", "eagle3-ref nonsense", "rm -rf build",
                                  "pip install torch", "mkdocs build",
                                  "python -m pytest --pyargs eagle3_ref.testing.conformance -m no_such_marker",
                                  "python -m pytest --eagle3-impl=no_such.module", "HYPOTHESIS_PROFILE=nope python -m pytest"])
def test_the_command_checks_can_fail(line):
    with pytest.raises((AssertionError, ValueError)):
        check_command(line)


def test_ttt_page_mask_is_the_function():
    from eagle3_ref import ttt_attention_mask

    drawn = next(b for b in blocks(ROOT / "docs" / "ttt.md", "text") if "|" in b)
    rows = [[int(c) for c in line.replace("|", " ").split()] for line in drawn.split("\n") if line and line[0] in "01"]
    assert ttt_attention_mask(3, 2)[0, 0].int().tolist() == rows


def test_random_tiny_target_example_runs():
    spec = importlib.util.spec_from_file_location("example", ROOT / "docs/examples/random_tiny_target.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(new_tokens=6, layers=7)  # asserts lossless output itself
    assert rows["plain"][0] == 1.0 and len(rows) == 4


def test_readme_lists_the_public_api():
    readme = (ROOT / "README.md").read_text()
    api = set(re.findall(r"`(\w+)", readme.split("## Public API", 1)[1]))
    missing = [name for name in eagle3_ref.__all__ if name not in api]
    assert not missing, f"README's Public API section does not list {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- test-command -->", 1)[1].split("<!-- /test-command -->", 1)[0]
    assert "python -m pytest" in block
    assert "test-command" in (ROOT / ".ci/run").read_text()


def test_the_training_plot_reads_a_finished_run_and_a_run_still_going(tmp_path, capsys):
    import json
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "docs/examples"))
    import plot_training

    history = [{"step": s, "loss": 10.0 - s / 100, "acc": [0.5]} for s in range(1, 301)]
    for r in history[99::100]:
        r.update(tau=2.0 + r["step"] / 300, tau_chain=1.5, eval_loss=11.0 - r["step"] / 200, eval_acc=[0.4, 0.3])
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "history.json").write_text(json.dumps(history))
    going = tmp_path / "going"
    (going / "ckpt-0000200").mkdir(parents=True)
    (going / "latest").write_text("ckpt-0000200")
    torch.save({"history": history[:200]}, going / "ckpt-0000200" / "trainer_state.pt")
    for run, rows in (("done", 3), ("going", 2)):
        assert plot_training.main([str(tmp_path / run), str(tmp_path / f"{run}.png")]) == 0
        table = capsys.readouterr().out
        assert table.count("\n| ") == rows and "| 200 | 8.245 | 10.000 | 0.400 / 0.300 | 2.67 | 1.50 |" in table, table
        assert (tmp_path / f"{run}.png").stat().st_size > 10_000


def test_ttt_memory_example_runs_small():
    import sys

    sys.path.insert(0, str(ROOT / "docs/examples"))
    import ttt_memory

    rows = ttt_memory.main(seq_len=32, steps=3, hidden=16)
    assert [r["implementation"] for r in rows] == ["diagonal", "dense"]


def test_readme_lists_every_pytest_marker():
    import tomllib

    markers = [m.split(":")[0] for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]]
    readme = (ROOT / "README.md").read_text()
    assert [m for m in markers if f"`{m}`" not in readme] == []


def test_readme_documents_every_command():
    from eagle3_ref.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    readme = (ROOT / "README.md").read_text()
    assert [c for c in sub.choices if f"eagle3-ref {c}" not in readme] == []


def test_the_targets_page_is_the_matrix_the_tests_draw():
    # docs/targets.md's table is generated from the strategies' ARCHITECTURES (the list the
    # matrix properties are parametrized by), so it cannot claim an architecture the tests skip.
    from eagle3_ref.testing.strategies import architecture_table

    page = (ROOT / "docs" / "targets.md").read_text()
    found = re.search(r"<!-- architecture-table -->\n(.*?)<!-- /architecture-table -->", page, re.S)
    assert found, "docs/targets.md has no <!-- architecture-table --> block"
    assert found.group(1) == architecture_table(), (
        "docs/targets.md's matrix differs from eagle3_ref.testing.strategies.ARCHITECTURES; paste the output of "
        "python -c 'from eagle3_ref.testing.strategies import architecture_table; print(architecture_table(), end=\"\")'")


def test_the_checkpoint_page_shows_the_converters_own_format_table():
    from eagle3_ref.tools.convert import format_table_markdown

    page = (ROOT / "docs" / "checkpoint.md").read_text()
    shown = page.split("<!-- format-table -->\n", 1)[1].split("<!-- /format-table -->", 1)[0]
    assert shown == format_table_markdown(), f"docs/checkpoint.md's format table is stale; it is now:\n" \
                                             f"{format_table_markdown()}"


def test_no_internal_vocabulary():
    """A reader cannot follow "the issue's bars": the docs speak of goals, not of our tracker."""
    pages = PAGES + sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "eagle3_ref").glob("*.py"))
    found = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in pages
             for m in re.finditer(r"(?i)\bthe issue'?s?\b|\bissue #\d+|\bthis issue\b", p.read_text())]
    assert found == []
