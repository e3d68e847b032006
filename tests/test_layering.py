"""The layering the method layer relies on, read from the import statements of ``src/nasdet``
(module level and inside functions alike).

- Generic modules never import a method: ``nasdet.methods`` is imported only by the glue
  (``nasdet.cli``, ``nasdet.pipeline``, ``nasdet/__init__.py``'s ``load_model``).
- A method never imports another method, nor the glue.
- There is no import cycle at all (imports under ``if TYPE_CHECKING:`` never run and are
  left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
GLUE = {
    "nasdet",
    "nasdet.cli",
    "nasdet.pipeline",
    "nasdet.__main__",
    "nasdet.methods",
    "nasdet.compare.inputs",  # nasdet compare reads configs and model files of every method
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "nasdet").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The nasdet module an imported name lives in (a submodule if there is one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The nasdet modules ``module`` imports (every ``import`` statement in the file)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {  # `if TYPE_CHECKING:` blocks never run: annotations only
        id(n) for b in ast.walk(tree) if _is_type_checking(b) for s in b.body for n in ast.walk(s)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if is_pkg else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}".rstrip(".")
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        else:
            continue
        for name in names:
            if name == "nasdet" or name.startswith("nasdet."):
                target = _target(name)
                if target and target != module:
                    found.add(target)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    name = getattr(test, "id", None) or getattr(test, "attr", None)
    return isinstance(node, ast.If) and name == "TYPE_CHECKING"


GRAPH = {m: imports_of(m) for m in MODULES}


def _method_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "methods" else None


GENERIC = sorted(m for m in MODULES if m not in GLUE and not _method_of(m))


@pytest.mark.parametrize("module", GENERIC)
def test_generic_modules_import_no_method(module: str) -> None:
    bad = sorted(t for t in GRAPH[module] if t == "nasdet.methods" or _method_of(t))
    assert not bad, f"{module} (generic) imports {bad}: keep methods/ a leaf"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _method_of(m)))
def test_a_method_imports_no_other_method_nor_the_glue(module: str) -> None:
    own = _method_of(module)
    bad = sorted(t for t in GRAPH[module] if t in GLUE or (_method_of(t) not in (None, own)))
    assert not bad, f"{module} imports {bad}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walker_sees_function_level_imports(tmp_path: Path) -> None:
    """The checks above can fail: a function-level import is an edge too."""
    assert "nasdet.methods" in GRAPH["nasdet"]  # load_model imports it inside the function
    assert "nasdet.methods.spnas.steps" in GRAPH["nasdet.methods.spnas"]
