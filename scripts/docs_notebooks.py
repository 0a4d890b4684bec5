"""Write the docs/ pages as Jupyter notebooks (.ipynb), optionally executed.

The Markdown pages stay the source. jupytext reads any of them as a notebook (prose -> Markdown cells,
each fenced ```python block -> a code cell), so with jupytext installed a page also opens directly in
Jupyter ("Open With -> Notebook"). This script writes .ipynb copies for people and tools that want
plain notebooks; the copies are not committed (the default output folder, build/notebooks, is ignored).

What the conversion adds to jupytext's reading:

* the ```output block written after a code block becomes that cell's output, so an unexecuted
  notebook shows what the cell prints (executing it replaces the output with the real one);
* a ```python no-run block and a shell block (```bash, read by jupytext as a %%bash cell) get the tag
  ``skip-execution``, so "Run all" (and nbclient) leaves them alone: they train for minutes or call a
  command line.

Usage::

    python scripts/docs_notebooks.py                          # every page -> build/notebooks/
    python scripts/docs_notebooks.py docs/07-gradients.md --out /tmp/nb --execute

Needs ``pip install jupytext nbclient ipykernel`` (part of the ``test`` extra). tests/test_docs.py
converts and executes every page with these functions.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_TAG = "skip-execution"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
_OUTPUT_FENCE = re.compile(r"\A```output[^\n]*\n(.*?)^```[ \t]*\n?", re.DOTALL | re.MULTILINE)


def pages() -> list[Path]:
    """The docs pages, in file-name order."""
    return sorted(DOCS.glob("*.md"))


def page_to_notebook(path):
    """The notebook (an nbformat v4 NotebookNode) of one Markdown page.

    Raises ValueError naming the page when it is not a readable Markdown file.
    """
    import jupytext
    import nbformat

    path = Path(path)
    if path.suffix != ".md":
        raise ValueError(f"page {str(path)!r} is not a Markdown (.md) file")
    if not path.is_file():
        raise ValueError(f"page {str(path)!r} does not exist")
    nb = jupytext.read(path, fmt="md")
    cells = []
    for cell in nb.cells:
        meta = cell.metadata
        if cell.cell_type == "code":
            flag = meta.pop("incorrectly_encoded_metadata", "")
            if flag.split()[:1] == ["no-run"] or cell.source.lstrip().startswith("%%"):
                meta.setdefault("tags", []).append(SKIP_TAG)
            cell.outputs, cell.execution_count = [], None
            cells.append(cell)
            continue
        m = _OUTPUT_FENCE.match(cell.source) if cell.cell_type == "markdown" else None
        if m and cells and cells[-1].cell_type == "code":
            cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=m.group(1))]
            rest = cell.source[m.end():].strip("\n")
            if not rest:
                continue
            cell = nbformat.v4.new_markdown_cell(rest)
        cells.append(cell)
    nb.cells = cells
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    nbformat.validate(nb)
    return nb


def execute(nb, cwd, timeout: int = 300):
    """Run every cell of ``nb`` in order in a fresh python3 kernel started in ``cwd`` (in place).

    Cells tagged ``skip-execution`` are left as they are. Raises nbclient's CellExecutionError (with the
    cell and the traceback) when a cell fails.
    """
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name=KERNELSPEC["name"],
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def stdout_of(cell) -> str:
    """What a code cell printed on stdout (its stream outputs, joined)."""
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write docs/*.md pages as .ipynb notebooks.")
    ap.add_argument("pages", nargs="*", help="pages to convert (default: every docs/*.md)")
    ap.add_argument("--out", default=str(ROOT / "build" / "notebooks"), help="output folder (default: %(default)s)")
    ap.add_argument("--execute", action="store_true",
                    help="run every cell (in a temporary folder) and keep the real outputs")
    args = ap.parse_args(argv)
    try:
        import jupytext  # noqa: F401
        import nbformat
    except ImportError as err:
        print(f"docs_notebooks: {err.name} is not installed; pip install jupytext nbclient ipykernel",
              file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.pages] or pages()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        try:
            nb = page_to_notebook(path)
        except ValueError as err:
            print(f"docs_notebooks: {err}", file=sys.stderr)
            return 2
        if args.execute:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                execute(nb, tmp)
        target = out / (path.stem + ".ipynb")
        nbformat.write(nb, target)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
