"""The ```python blocks of the README and of every guide under docs/ run, in order, as
written (each file in its own namespace, from a scratch working directory). Blocks fenced
as ```py need something the page's shell commands make first (a finished search run, a
W&B run) and are not executed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks, f"{page.name} has no python examples"
    monkeypatch.chdir(tmp_path)  # examples write runs/... relative to the working directory
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102
