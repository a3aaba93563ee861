"""Code in docs/ runs (small settings) and the README's claims match the code."""

import importlib.util
import re
from pathlib import Path

import eagle3_ref

ROOT = Path(__file__).resolve().parents[1]


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
