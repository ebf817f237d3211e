"""The package's layering, read from the source with ``ast``: core/ imports nothing built on
it, the subpackages import each other without cycles, and nothing in core/ or estimators/
names a method or a specific role class."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parent.parent / "learnreg"

#: What core/ may import besides itself, and why.
CORE_MAY_IMPORT = {
    "learnreg.errors": "the exception types every layer raises",
    "learnreg.registry": "core components (meta-objectives, meta-optimizers) register by name",
}

#: Method names (lower case) that must not appear in the code of core/ or estimators/:
#: a method is a choice of roles and estimator settings (a preset), never a branch there.
METHODS = ("adalfl", "ml3", "maml", "npbml", "taylorglo", "evomal", "metasgd", "meta_sgd")

#: The package's modules at the top of learnreg/ are one unit each (runner, config...);
#: learnreg/__init__.py is the public facade, whose imports all run lazily (on first use),
#: so it is not a node of the graph (tested below).
FACADE = PACKAGE / "__init__.py"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every ``learnreg...`` module ``name`` imports, anywhere in the file (function-level
    imports count: a lazy import is still a dependency)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from learnreg import config` imports the module learnreg.config
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            found.append((base, node.lineno))
    return [(t, line) for t, line in found if t == "learnreg" or t.startswith("learnreg.")]


def _unit(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "learnreg"


def _existing(target: str, modules: dict) -> str:
    """``learnreg.a.b.name`` -> the longest prefix that is a module (names are attributes)."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_core_imports_nothing_built_on_it():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if not name.startswith("learnreg.core"):
            continue
        for target, line in _imports(name, path):
            target = _existing(target, modules)
            if target == "learnreg" or target.startswith("learnreg.core"):
                continue
            if target not in CORE_MAY_IMPORT:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    bad = sorted(set(bad))
    assert not bad, "core/ must not import the packages built on it:\n" + "\n".join(bad)


def test_the_facade_imports_lazily():
    """learnreg/__init__.py imports learnreg modules only inside functions, so importing
    any subpackage never pulls in the runner (and the facade is no edge of a cycle)."""
    tree = ast.parse(FACADE.read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top for a in n.names] + [
        n.module for n in top if isinstance(n, ast.ImportFrom)
    ]
    assert not [n for n in names if n and n.startswith("learnreg")], names


def _graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: one place that imports it}."""
    modules, graph = _modules(), {}
    for name, path in modules.items():
        if path == FACADE:
            continue
        for target, line in _imports(name, path):
            target = _existing(target, modules)
            a, b = _unit(name), _unit(target)
            if b != "learnreg" and a != b:
                graph.setdefault(a, {}).setdefault(b, f"{path.relative_to(PACKAGE.parent)}:{line}")
    return graph


def _cycle(graph: dict) -> list[str] | None:
    """One cycle of the graph (a list of units, first == last), or None (depth-first)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_subpackages_import_each_other_without_cycles():
    graph = _graph()
    cycle = _cycle(graph)
    where = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, "import cycle between learnreg's subpackages:\n" + "\n".join(where)
    # the layering the contracts describe: core < estimators < experiment < runner
    for lower, higher in (("core", "estimators"), ("estimators", "experiment"), ("eval", "runner")):
        assert higher not in graph.get(lower, {}), f"{lower} imports {higher}"


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": ""}, "b": {"c": ""}}) is None


def _code_words(path: Path) -> set[str]:
    """Identifiers, attribute names, imported names and string constants of a module, its
    docstrings (and comments, which ast drops) left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            docstrings.add(id(first.value))
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.update(node.name.split("."))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            words.add(node.name)
        elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
            words.add(node.arg)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
    return words


def _role_classes() -> set[str]:
    """The role classes learnreg ships (losses/, optimizers/, inits/), less the names
    torch.optim also has (core/outer.py builds the meta-optimizer ``torch.optim.Adam``)."""
    names = set()
    for sub in ("losses", "optimizers", "inits"):
        for path in (PACKAGE / sub).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    names.add(node.name)
    return names - set(dir(torch.optim))


@pytest.mark.parametrize("sub", ["core", "estimators"])
def test_core_and_estimators_name_no_method_and_no_role_class(sub):
    roles = _role_classes()
    assert {"NeuralLoss", "TaylorLoss", "LearnedLR", "LearnedInit"} <= roles  # the scan sees them
    bad = []
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        words = _code_words(path)
        methods = {w for w in words for m in METHODS if m in w.lower()}
        named = words & roles
        if methods or named:
            bad.append(f"{path.relative_to(PACKAGE.parent)}: {sorted(methods | named)}")
    assert not bad, f"{sub}/ must stay method- and role-generic:\n" + "\n".join(bad)


def test_estimators_import_no_role_package():
    """Estimators move meta-parameters of any role: they import no concrete roles."""
    modules, bad = _modules(), []
    roles = ("learnreg.losses", "learnreg.optimizers", "learnreg.inits", "learnreg.models")
    for name, path in modules.items():
        rel = str(path.relative_to(PACKAGE.parent))
        if not name.startswith("learnreg.estimators"):
            continue
        for target, line in _imports(name, path):
            if _existing(target, modules).startswith(roles):
                bad.append(f"{rel}:{line} imports {_existing(target, modules)}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_the_word_scan_ignores_docstrings_and_sees_code(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""MAML and NeuralLoss in a docstring."""\n\nx = run_npbml("ok")\n')
    assert {"run_npbml", "x", "ok"} <= _code_words(module)
    assert "MAML" not in _code_words(module) and "NeuralLoss" not in _code_words(module)
