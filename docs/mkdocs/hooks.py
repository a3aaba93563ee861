"""mkdocs hooks of the eagle3-ref site (``mkdocs build --strict -f docs/mkdocs/mkdocs.yml``).

Three jobs (and a fourth file beside this one: ``griffe_roles.py`` turns the docstrings'
``:func:``/``:class:`` roles into links for the API reference):

* **The executed tutorials.** The notebooks in ``notebooks/`` are committed without outputs;
  the site shows them executed. :func:`execute_notebook` runs one top to bottom with nbclient (the
  test suite uses the same function, so what the site shows is what the tests ran). Executing
  all of them takes minutes (half an hour on a loaded 2-core machine), so a build **reuses**
  executed copies by default: :func:`executed_copy` takes the one shipped in
  ``docs/mkdocs/executed/`` when it was made from the notebook's current text (so a fresh clone
  builds the site in seconds, without running a training cell), else the one in a cache
  (``~/.cache/eagle3-ref/notebooks``, or ``EAGLE3_REF_NOTEBOOK_CACHE``), both named by the hash of
  the notebook's own text, and runs a notebook only when neither has a copy of that text.
  ``python docs/mkdocs/hooks.py refresh`` executes the notebooks whose shipped copy is missing or
  stale and ships the new copies (``tests/test_site.py`` fails while one is).
  ``EAGLE3_REF_EXECUTE=1`` runs every one again (after a change to the package that the
  notebooks show). With ``EAGLE3_REF_EXECUTED_NOTEBOOKS=DIR`` the build takes the copies in
  ``DIR`` instead (``tests/test_site.py`` passes the ones the notebook tests produced).
  Progress bars and warnings (stderr) are dropped from the pages.
* **Maths offline.** The pages' equations are rendered by MathJax 3 served with the site
  (``assets/mathjax/``), copied from the ``sphinx-mathjax-offline`` package (a dev dependency),
  not loaded from a CDN: a classroom without internet sees equations, not raw LaTeX.
* **The code beside the equations.** A line ``<!-- source: eagle3_ref.tree.grow_tree -->`` in a
  page becomes the current source of that function or class, so a concept page can never show
  stale code. (On GitHub the comment is invisible; the page also names the file.)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path

import nbformat
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

# The griffe extension beside this file, registered as the module mkdocs.yml names, so that
# mkdocstrings finds it (in sys.modules) whatever the working directory and sys.path.
_spec = importlib.util.spec_from_file_location("griffe_roles", Path(__file__).with_name("griffe_roles.py"))
sys.modules["griffe_roles"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["griffe_roles"])

log = logging.getLogger("mkdocs.hooks.eagle3_ref")
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SOURCE = re.compile(r"^<!-- source: ([\w.]+) -->$", re.M)


def execute_notebook(path: Path, workdir: Path, timeout: int = 900) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in ``workdir``; a failing cell raises CellExecutionError."""
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def notebook_cache() -> Path:
    """Where executed copies are kept between builds."""
    return Path(os.environ.get("EAGLE3_REF_NOTEBOOK_CACHE") or Path.home() / ".cache" / "eagle3-ref" / "notebooks")


SHIPPED = Path(__file__).resolve().parent / "executed"  # executed copies committed with the docs


def copy_name(path: Path) -> str:
    """The name of an executed copy of the notebook at ``path``: its stem and the hash of its text."""
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}.ipynb"


def executed_copy(path: Path, workdir: Path, cache: Path, force: bool = False) -> nbformat.NotebookNode:
    """The executed notebook: the shipped or cached copy made from this very text, else a fresh
    run (then cached). ``force`` runs it whatever the copies hold."""
    shipped, cached = SHIPPED / copy_name(path), cache / copy_name(path)
    if shipped.exists() and not force:
        log.info("using the shipped executed %s (EAGLE3_REF_EXECUTE=1 runs it again)", path.name)
        return nbformat.read(shipped, as_version=4)
    if cached.exists() and not force:
        log.info("reusing the executed %s (EAGLE3_REF_EXECUTE=1 runs it again)", path.name)
        return nbformat.read(cached, as_version=4)
    log.info("executing %s", path.name)
    notebook = execute_notebook(path, workdir)
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"{path.stem}-*.ipynb"):
        stale.unlink()
    nbformat.write(notebook, cached)
    return notebook


def for_the_site(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The executed notebook without stderr (progress bars, library warnings)."""
    notebook = nbformat.from_dict(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    return notebook


def resolve(dotted: str):
    """``package.module.attr[.attr]`` -> the object (the longest importable module prefix)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


_build_dir: tempfile.TemporaryDirectory | None = None


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files, config):
    global _build_dir
    _build_dir = tempfile.TemporaryDirectory(prefix="eagle3-ref-site-")
    out = Path(_build_dir.name) / "notebooks"
    out.mkdir()
    given = os.environ.get("EAGLE3_REF_EXECUTED_NOTEBOOKS")
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if given:
            executed = Path(given) / path.name
            if not executed.exists():
                raise FileNotFoundError(f"EAGLE3_REF_EXECUTED_NOTEBOOKS={given} has no {path.name}")
            notebook = nbformat.read(executed, as_version=4)
        else:
            notebook = executed_copy(path, Path(_build_dir.name), notebook_cache(),
                                     force=os.environ.get("EAGLE3_REF_EXECUTE", "") not in ("", "0"))
        nbformat.write(for_the_site(notebook), out / path.name)
        files.append(File(f"notebooks/{path.name}", str(out.parent), config["site_dir"], config["use_directory_urls"]))
    for file in mathjax_files(config):
        files.append(file)
    return files


# What the site needs of MathJax 3: the combined TeX component, its fonts, the TeX extensions it
# loads on demand, and the menu and accessibility parts it loads itself (about 3 MB of its 24).
MATHJAX_PARTS = ("tex-mml-chtml.js", "output/chtml", "input/tex", "ui", "a11y")


def mathjax_dir() -> Path:
    """MathJax 3 as the ``sphinx-mathjax-offline`` distribution installs it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
    except PackageNotFoundError:
        path = None
    if path is None or not (path / MATHJAX_PARTS[0]).is_file():
        raise FileNotFoundError("the site serves MathJax itself: pip install sphinx-mathjax-offline "
                                "(in the dev extra, `pip install -e .[dev]`)")
    return path


def mathjax_files(config) -> list[File]:
    """The MathJax parts as static files of the site, under ``assets/mathjax/``."""
    root, files = mathjax_dir(), []
    for part in MATHJAX_PARTS:
        for path in [root / part] if (root / part).is_file() else sorted((root / part).rglob("*")):
            if path.is_file():
                files.append(File.generated(config, f"assets/mathjax/{path.relative_to(root).as_posix()}",
                                            abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def code(match: re.Match) -> str:
        obj = inspect.unwrap(resolve(match.group(1)))  # through @torch.no_grad()
        source = textwrap.dedent(inspect.getsource(obj)).rstrip()  # methods too
        where = obj.__module__.replace(".", "/") + ".py"
        return f'```python title="{where}: {obj.__qualname__}"\n{source}\n```'

    return SOURCE.sub(code, markdown)


def on_post_build(config):
    if _build_dir is not None:
        _build_dir.cleanup()


def refresh_shipped() -> list[str]:
    """Execute every notebook whose shipped copy is missing or stale, ship the new copy (stderr
    dropped, as on the site) and remove the stale one; the names of the notebooks run."""
    ran = []
    SHIPPED.mkdir(exist_ok=True)
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if (SHIPPED / copy_name(path)).exists():
            continue
        print(f"executing {path.name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="eagle3-ref-notebook-") as workdir:
            notebook = for_the_site(execute_notebook(path, Path(workdir)))
        for stale in SHIPPED.glob(f"{path.stem}-*.ipynb"):
            stale.unlink()
        nbformat.write(notebook, SHIPPED / copy_name(path))
        ran.append(path.name)
    return ran


if __name__ == "__main__":  # python docs/mkdocs/hooks.py refresh
    if sys.argv[1:] != ["refresh"]:
        raise SystemExit("usage: python docs/mkdocs/hooks.py refresh  (ship executed copies of changed notebooks)")
    print("shipped:", ", ".join(refresh_shipped()) or "nothing: every copy is current")
