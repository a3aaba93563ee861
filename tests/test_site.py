"""The documentation site builds with ``mkdocs build --strict``, with the executed tutorials.

The tutorials are not run again here: the ``executed_notebooks`` fixture hands over the copies
the notebook tests produced (running any that were not run in this session).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "mkdocs" / "mkdocs.yml"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def nav_pages() -> list[str]:
    def walk(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, list):
            for e in entry:
                yield from walk(e)
        elif isinstance(entry, dict):
            for e in entry.values():
                yield from walk(e)

    return list(walk(yaml.safe_load(CONFIG.read_text())["nav"]))


def test_every_page_and_tutorial_is_in_the_nav():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} | {f"notebooks/{p.name}" for p in NOTEBOOKS}
    assert sorted(pages - set(nav_pages())) == []


def test_readme_links_every_page():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)\)", readme))
    assert sorted({f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} - linked) == []


@pytest.fixture(scope="module")
def site(executed_notebooks, tmp_path_factory):
    for path in NOTEBOOKS:
        executed_notebooks(path)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "EAGLE3_REF_EXECUTED_NOTEBOOKS": str(executed_notebooks.directory), "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(out)],
                         capture_output=True, text=True, env=env, cwd=out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return out


def test_site_builds_strict_with_every_page(site):
    for page in nav_pages():
        assert (site / page.removesuffix(".md").removesuffix(".ipynb").replace("index", "") / "index.html").exists(), page


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_site_shows_the_executed_tutorial(site, path):
    html = (site / "notebooks" / path.stem / "index.html").read_text()
    assert "jp-OutputArea-output" in html  # cell outputs are on the page
    assert "Traceback" not in html and "Loading weights" not in html  # no errors, no progress bars


def test_concept_pages_show_the_current_code(site):
    html = (site / "tree" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)
    assert "def grow_tree(" in text and "eagle3_ref/tree.py: grow_tree" in text
    assert "&lt;!-- source:" not in html and "<!-- source:" not in html


def test_api_reference_lists_the_public_api(site):
    import eagle3_ref

    html = (site / "api" / "index.html").read_text()
    # Each public name has its own entry, under the module that defines it (an object without a
    # docstring is left out by mkdocstrings).
    missing = [name for name in eagle3_ref.__all__
               if f'id="{getattr(eagle3_ref, name).__module__}.{name}"' not in html]
    assert missing == []


def test_docstrings_render_their_roles_and_tables(site):
    """The docstrings' reST roles become links (docs/mkdocs/griffe_roles.py) and their tables
    tables: the page shows no literal ``:func:`` and no rows of ``=====`` outside source code."""
    html = (site / "api" / "index.html").read_text()
    prose = re.sub(r"<pre.*?</pre>|<details.*?</details>", "", html, flags=re.S)  # the shown source is as written
    assert re.findall(r":(?:func|class|meth|mod|data|attr):", prose) == []
    assert "=====" not in prose
    # fusion's conventions table is a table, and :func:`to_convention` in the module docstring a link to it.
    assert re.search(r"<table>.*?<th>convention</th>", prose, re.S)
    assert 'href="#eagle3_ref.fusion.to_convention"><code>to_convention</code>' in prose


def test_a_build_reuses_executed_notebooks_until_their_text_changes(tmp_path, monkeypatch):
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("site_hooks_for_test", ROOT / "docs" / "mkdocs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    runs = []

    def fake_execute(path, workdir):
        runs.append(path.name)
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata["executed"] = len(runs)
        return notebook

    monkeypatch.setattr(hooks, "execute_notebook", fake_execute)
    source = tmp_path / "01_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), source)
    cache = tmp_path / "cache"
    assert hooks.executed_copy(source, tmp_path, cache).metadata["executed"] == 1  # no copy: run
    assert hooks.executed_copy(source, tmp_path, cache).metadata["executed"] == 1 and runs == ["01_x.ipynb"]  # reused
    assert hooks.executed_copy(source, tmp_path, cache, force=True).metadata["executed"] == 2  # asked: run again
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("2 + 2")]), source)
    assert hooks.executed_copy(source, tmp_path, cache).metadata["executed"] == 3  # the text changed: run
    assert len(list(cache.glob("01_x-*.ipynb"))) == 1  # the stale copy is gone
    monkeypatch.setenv("EAGLE3_REF_NOTEBOOK_CACHE", str(cache))
    assert hooks.notebook_cache() == cache


def test_maths_is_rendered_by_a_mathjax_served_with_the_site(site):
    """Offline (a classroom, this machine) a CDN is unreachable and the pages would show raw LaTeX:
    every page loads MathJax from the site itself, and the site holds it with its fonts."""
    pages = sorted(site.rglob("*.html"))
    loaded = {src for page in pages for src in re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page.read_text(),
                                                         re.I)}
    assert loaded and all(not src.startswith(("http:", "https:", "//")) for src in loaded), loaded
    assert (site / "assets" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert list((site / "assets" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    ttt = (site / "ttt" / "index.html").read_text()
    assert 'class="arithmatex"' in ttt and 'src="../assets/mathjax/tex-mml-chtml.js"' in ttt


def test_pages_give_code_and_equations_the_width(site):
    """At 1280 px the table of contents sits in the left navigation and the content takes the
    right column too (docs/stylesheets/extra.css): the first TTT equation and the code lines fit."""
    config = yaml.safe_load(CONFIG.read_text().replace("!relative", ""))
    assert "toc.integrate" in config["theme"]["features"]
    ttt = (site / "ttt" / "index.html").read_text()
    assert 'href="../stylesheets/extra.css"' in ttt
    assert "div.arithmatex { overflow-x: auto" in (site / "stylesheets" / "extra.css").read_text()


def test_every_tutorial_ships_an_executed_copy_of_its_current_text():
    # A first `mkdocs build` executed every notebook: 41 minutes on a loaded 2-core machine, then
    # notebook 08 hit its cell timeout. The build takes the shipped copy of a notebook's current
    # text instead, and runs only a notebook whose text changed.
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("eagle3_ref_site_hooks", ROOT / "docs" / "mkdocs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    want = {hooks.copy_name(path) for path in NOTEBOOKS}
    have = {path.name for path in hooks.SHIPPED.glob("*.ipynb")}
    assert have == want, (f"shipped executed copies missing {sorted(want - have)}, stale {sorted(have - want)}: "
                          "run `python docs/mkdocs/hooks.py refresh` and commit docs/mkdocs/executed/")
    for name in want:
        code = [c for c in nbformat.read(hooks.SHIPPED / name, as_version=4).cells if c.cell_type == "code"]
        assert code and all(c.execution_count is not None for c in code), f"{name}: not executed"
        assert not any(o.output_type == "error" for c in code for o in c.outputs), f"{name}: a cell failed"
