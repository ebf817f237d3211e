"""Notebooks: stored without outputs, in sync with their jupytext .py pairs.

(nbmake executes them in `make test`; this checks what is committed.)"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_paired(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    pair = jupytext.read(path.with_suffix(".py"))
    assert [c.source for c in pair.cells] == [c.source for c in notebook.cells], (
        f"{path.name} differs from its .py pair: run `jupytext --sync {path.with_suffix('.py')}`"
    )


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2
