"""Architecture figures for a source tree: biggest modules and functions, import cycles
(imports inside functions included), and `is None` checks on the components object.

Usage: python scripts/arch_figures.py [ROOT]   (default: the repository root)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("gateway", "security", "privacy", "models", "policies", "audit")


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                result.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return result


def functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            end = node.end_lineno or node.lineno
            out.append((end - node.lineno + 1, node.name))
    return out


def none_checks(root: Path) -> int:
    """`<components>.<field> is (not) None` in gateway/ (the components object's names)."""
    count = 0
    names = {"c", "components", "self._components"}
    for path in (root / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Is | ast.IsNot) for op in node.ops
            ):
                left = node.left
                if (
                    isinstance(left, ast.Attribute)
                    and ast.unparse(left.value) in names
                    and any(
                        isinstance(c, ast.Constant) and c.value is None for c in node.comparators
                    )
                ):
                    count += 1
    return count


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    mods = modules(root)
    known = set(mods)
    graph = {name: imports_of(name, path, known) for name, path in mods.items()}
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in mods.items()), reverse=True)
    funcs = sorted(
        ((n, f"{m}.{f}") for m, p in mods.items() for n, f in functions(p)), reverse=True
    )
    print(f"root: {root}")
    print("biggest modules:", ", ".join(f"{n} {lines}" for lines, n in sizes[:6]))
    print("biggest functions:", ", ".join(f"{n} {lines}" for lines, n in funcs[:6]))
    comps = cycles(graph)
    print(f"import cycles (SCCs, imports inside functions counted): {len(comps)}")
    for comp in comps:
        print("  ", " <-> ".join(comp))
    print(f"`is None` checks on components in gateway/: {none_checks(root)}")


if __name__ == "__main__":
    main()
