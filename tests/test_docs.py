"""Every Python snippet of the documentation (docs/) runs as a standalone script.

Markdown pages: fenced ```python blocks (and MyST ```{code-block} python directives).
reStructuredText pages: ``.. code-block:: python`` blocks. Each block runs on its own, in a
fresh namespace, so a snippet that depends on an earlier one fails here as it would for a reader.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"

MARKDOWN_BLOCK = re.compile(r"^```(?:python|\{code-block\}[ \t]+python)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
RST_BLOCK = re.compile(
    r"^([ \t]*)\.\. code-block:: python[ \t]*\n((?:[ \t]*:[\w-]+:.*\n)*)((?:\1[ \t]+.*\n|[ \t]*\n)+)", re.M
)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return [(_line_of(text, m.start()), m.group(1)) for m in MARKDOWN_BLOCK.finditer(text)]
    return [(_line_of(text, m.start()), textwrap.dedent(m.group(3))) for m in RST_BLOCK.finditer(text)]


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.suffix in (".md", ".rst") and "_build" not in p.parts)


SNIPPETS = [
    pytest.param(page, line, code, id=f"{page.relative_to(DOCS)}:{line}")
    for page in _pages()
    for line, code in _blocks(page)
]


def test_docs_have_python_snippets():
    assert _pages(), f"no documentation pages found under {DOCS}"
    assert len(SNIPPETS) >= 5, "the docs should show runnable Python snippets (quickstart, options guide)"


def test_block_extraction_finds_both_syntaxes():
    md = "text\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
    assert MARKDOWN_BLOCK.findall(md) == ["x = 1\n"]
    rst = "Intro\n\n.. code-block:: python\n   :caption: demo\n\n   x = 1\n   y = x\n\nAfter\n"
    (match,) = RST_BLOCK.finditer(rst)
    assert textwrap.dedent(match.group(3)).strip() == "x = 1\ny = x"


@pytest.mark.parametrize(("page", "line", "code"), SNIPPETS)
def test_docs_snippet_runs(page: Path, line: int, code: str):
    torch.manual_seed(0)
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs__"})
