"""Every ```python block in docs/*.md runs, in order, one namespace per page.

A block whose first line is ``# no-run`` is shown but not executed (e.g. a command that trains for
minutes). Blocks run with the docs/ directory as the working directory's neighbour: paths in the
pages are relative to the repository root.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path):
    return [b for b in BLOCK.findall(path.read_text(encoding="utf-8")) if not b.lstrip().startswith("# no-run")]


PAGES = [p for p in DOCS if code_blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_page_runs(page, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": f"docs_{page.stem}", "DOCS_TMP": str(tmp_path)}
    for i, block in enumerate(code_blocks(page), 1):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)


def test_docs_exist():
    assert DOCS, "docs/ has no pages"
