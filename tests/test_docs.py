"""The docs pages run, print what they show, use only public API, and open as notebooks.

Conventions of a page (docs/README.md says the same for authors):

* Every fenced ```python block runs, in page order, in one namespace per page, with a fresh temporary
  folder as the working directory. Nothing is injected: a block that needs a file path makes its own
  (``tempfile.mkdtemp()``), so a reader can paste the blocks into a Python session or notebook.
* A fenced block with the info string ``output`` placed directly after a python block (only blank
  lines between them) is what that block prints on stdout. The test compares the two after removing
  trailing whitespace on every line and blank lines at the end.
* ```output approx: the same, except that every number is compared to the precision it is printed
  with: ``0.123`` matches anything printed as 0.122 .. 0.124, ``3e-10`` anything from 2e-10 to 4e-10
  (one unit of the last printed digit). The text around the numbers must still match exactly. Use it
  only for values that depend on floating-point summation order (BLAS, threads); prefer printing a
  rounded value or a comparison such as ``err < 1e-8``.
* ```python no-run marks a block that is shown but not run (it trains for minutes, or needs data the
  reader has and the test has not). Its first line must be a comment saying why. No output block may
  follow it.
* Code on the pages uses only public names: no ``obj._name`` attribute and no ``_module`` import
  (dunders such as ``__name__`` are fine).
* Each page also converts to a notebook (scripts/docs_notebooks.py, through jupytext) whose code cells
  run in order in a fresh python3 kernel and print the same outputs.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(`{3,})[ \t]*([^`\n]*)$")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass
class Block:
    info: str          # the fence's info string, e.g. "python", "python no-run", "output approx"
    code: str
    line: int          # line of the opening fence (1-based)
    end: int           # line of the closing fence
    output: Block | None = None

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def runs(self) -> bool:
        return self.lang == "python" and "no-run" not in self.info.split()[1:]


def fenced_blocks(text: str, name: str = "page") -> list[Block]:
    """Every top-level fenced block of a Markdown text, in order (ValueError on an unclosed fence)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i
        i += 1
        while i < len(lines) and not (lines[i].startswith(fence) and not lines[i].strip("`").strip()):
            i += 1
        if i == len(lines):
            raise ValueError(f"{name}: fence opened at line {start + 1} is never closed")
        blocks.append(Block(info, "\n".join(lines[start + 1:i]) + "\n", start + 1, i + 1))
        i += 1
    return blocks


def page_blocks(path: Path) -> list[Block]:
    """The python blocks of a page, each with its output block attached; ValueError on a misplaced one."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out, prev = [], None
    for b in fenced_blocks(text, path.name):
        if b.lang == "output":
            between = lines[prev.end:b.line - 1] if prev is not None else ["x"]
            if prev is None or prev.lang != "python" or any(s.strip() for s in between):
                raise ValueError(f"{path.name}:{b.line}: an output block must follow a python block directly")
            if not prev.runs:
                raise ValueError(f"{path.name}:{b.line}: output after a no-run block cannot be checked")
            if prev.output is not None:
                raise ValueError(f"{path.name}:{b.line}: a python block has two output blocks")
            prev.output = b
        elif b.lang == "python":
            out.append(b)
        prev = b
    return out


def normalise(text: str) -> list[str]:
    lines = [s.rstrip() for s in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _close(expected: str, actual: str) -> bool:
    """Number tokens equal to one unit of the expected token's last printed digit."""
    mant, _, exp = expected.lower().partition("e")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    unit = 10.0 ** (int(exp or 0) - decimals)
    return abs(float(expected) - float(actual)) <= unit * 1.000001


def outputs_match(expected: str, actual: str, approx: bool) -> bool:
    exp, act = normalise(expected), normalise(actual)
    if not approx:
        return exp == act
    if len(exp) != len(act):
        return False
    for e, a in zip(exp, act, strict=True):
        if NUMBER.sub("#", e) != NUMBER.sub("#", a):
            return False
        if not all(_close(x, y) for x, y in zip(NUMBER.findall(e), NUMBER.findall(a), strict=True)):
            return False
    return True


def mismatch_message(where: str, expected: str, actual: str) -> str:
    return f"{where}: printed output differs from the page\n--- page\n{expected}--- printed\n{actual}---"


def private_uses(code: str) -> list[str]:
    """``obj._name`` attributes and ``_private`` module imports in a block of code."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Attribute):
            a = node.attr
            if a.startswith("_") and not (a.startswith("__") and a.endswith("__")):
                found.append(f"line {node.lineno}: .{a}")
        elif isinstance(node, ast.ImportFrom):
            names = (node.module or "").split(".") + [al.name for al in node.names]
            if any(n.startswith("_") and not n.startswith("__") for n in names):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for al in node.names:
                if any(p.startswith("_") and not p.startswith("__") for p in al.name.split(".")):
                    found.append(f"line {node.lineno}: import {al.name}")
    return sorted(found, key=lambda s: int(s.split()[1].rstrip(":")))


PAGES = [p for p in DOCS if re.search(r"^```+[ \t]*python", p.read_text(encoding="utf-8"), re.MULTILINE)]
IDS = [p.name for p in PAGES]


def test_docs_exist():
    assert PAGES, "docs/ has no page with python blocks"


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_docs_page_rules(page):
    """Output blocks sit after python blocks, no-run blocks say why, no private names, no DOCS_TMP."""
    for b in page_blocks(page):
        where = f"{page.name}:{b.line}"
        if not b.runs:
            first = b.code.strip().splitlines()[0] if b.code.strip() else ""
            assert re.match(r"#\s*\S+(\s+\S+){2,}", first), (
                f"{where}: a no-run block must open with a comment that says why it is not run")
        uses = private_uses(b.code)
        assert not uses, f"{where}: private names on a page: {uses}"
        assert "DOCS_TMP" not in b.code, f"{where}: DOCS_TMP is gone; make a temporary folder on the page"


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_docs_page_runs(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    try:
        for i, b in enumerate([b for b in page_blocks(page) if b.runs], 1):
            code = compile(b.code, f"{page.name}:{b.line} (block {i})", "exec")
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(code, namespace)  # noqa: S102 (running the page is the point)
            printed = buf.getvalue()
            sys.stdout.write(printed)
            if b.output is not None:
                approx = "approx" in b.output.info.split()[1:]
                assert outputs_match(b.output.code, printed, approx), mismatch_message(
                    f"{page.name}:{b.line}", b.output.code, printed)
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


# -- the comparison rules themselves ---------------------------------------------------------------
def test_output_comparison_rules():
    assert outputs_match("a 1\nb  \n\n", "a 1  \nb\n", approx=False)
    assert not outputs_match("a 1\n", "a 2\n", approx=False)
    assert outputs_match("err 0.123, 3e-10\n", "err 0.124, 4e-10\n", approx=True)
    assert not outputs_match("err 0.123\n", "err 0.125\n", approx=True)
    assert not outputs_match("err 3e-10\n", "err 5e-10\n", approx=True)
    assert not outputs_match("loss 0.1\n", "LOSS 0.1\n", approx=True)
    assert not outputs_match("1 2\n", "1 2 3\n", approx=True)
    assert not outputs_match("1\n", "1\n2\n", approx=True)


def test_page_parser_rules(tmp_path):
    ok = tmp_path / "ok.md"
    ok.write_text("# t\n\n```python\nprint(1)\n```\n\n```output\n1\n```\n\n```python no-run\n# slow: minutes\n```\n")
    blocks = page_blocks(ok)
    assert [b.runs for b in blocks] == [True, False] and blocks[0].output.code == "1\n"
    orphan = tmp_path / "orphan.md"
    orphan.write_text("```python\nprint(1)\n```\nprose in between\n```output\n1\n```\n")
    with pytest.raises(ValueError, match="must follow a python block"):
        page_blocks(orphan)
    unclosed = tmp_path / "unclosed.md"
    unclosed.write_text("```python\nprint(1)\n")
    with pytest.raises(ValueError, match="never closed"):
        page_blocks(unclosed)
    assert private_uses("m._offsets[1]\nfrom minissd._ext import x\nimport minissd._im2col\n") == [
        "line 1: ._offsets", "line 2: from minissd._ext import ...", "line 3: import minissd._im2col"]
    assert private_uses("type(x).__name__\nfrom minissd.nn import Conv2d\n") == []


# -- notebooks -----------------------------------------------------------------------------------
def _notebook_tools():
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = importlib.util.spec_from_file_location("docs_notebooks", ROOT / "scripts" / "docs_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_docs_page_notebook(page, tmp_path, monkeypatch):
    """The page converts to a notebook; its cells run in order in a kernel and print the page's outputs."""
    nbtools = _notebook_tools()
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbtools.page_to_notebook(page)
    blocks = page_blocks(page)
    code_cells = [c for c in nb.cells if c.cell_type == "code" and not c.source.lstrip().startswith("%%")]
    assert [c.source.strip() for c in code_cells] == [b.code.strip() for b in blocks], (
        f"{page.name}: the notebook's code cells are not the page's python blocks")
    for c, b in zip(code_cells, blocks, strict=True):
        assert (nbtools.SKIP_TAG in c.metadata.get("tags", [])) == (not b.runs)
        if b.output is not None:
            assert normalise(nbtools.stdout_of(c)) == normalise(b.output.code)
    nbtools.execute(nb, tmp_path)
    for c, b in zip(code_cells, blocks, strict=True):
        if b.output is not None:
            printed = nbtools.stdout_of(c)
            approx = "approx" in b.output.info.split()[1:]
            assert outputs_match(b.output.code, printed, approx), mismatch_message(
                f"{page.name}:{b.line} (notebook)", b.output.code, printed)


def test_notebook_script_rejects_bad_page(tmp_path, capsys):
    nbtools = _notebook_tools()
    assert nbtools.main([str(tmp_path / "missing.md"), "--out", str(tmp_path)]) == 2
    assert "missing.md" in capsys.readouterr().err
    page = tmp_path / "p.md"
    page.write_text("# p\n\n```python\nprint(6 * 7)\n```\n\n```output\n42\n```\n\nafter\n")
    assert nbtools.main([str(page), "--out", str(tmp_path / "nb")]) == 0
    import nbformat

    nb = nbformat.read(tmp_path / "nb" / "p.ipynb", as_version=4)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "markdown"]
    assert nbtools.stdout_of(nb.cells[1]) == "42\n" and nb.cells[2].source == "after"
