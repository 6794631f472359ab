"""The floors of the house: which packages may import which. `python -m toolkit.tools.layers` fails on an
upward import (a module importing one on a higher floor) and on a cycle between packages on one floor.

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

# lowest floor first; a module may import its own floor and the floors below
FLOORS: list[tuple[str, list[str]]] = [
    ("shared utilities", ["toolkit.errors", "toolkit.util", "toolkit.layout"]),
    ("text and tensors", ["toolkit.text", "toolkit.chat", "toolkit.loss", "toolkit.packing"]),
    # the curriculum plan is what the recipe alone says about each step: recipe validation runs it
    ("recipe schema", ["toolkit.config", "toolkit.recipe", "toolkit.curriculum.plan", "toolkit.curriculum.schedule"]),
    ("models and data", ["toolkit.model", "toolkit.lora", "toolkit.weights", "toolkit.data", "toolkit.journal"]),
    ("components", ["toolkit.curriculum", "toolkit.monitor", "toolkit.dream"]),
    ("training and serving", ["toolkit.train", "toolkit.serve", "toolkit.estimate"]),
    ("evaluation and analysis", ["toolkit.evaluate", "toolkit.after_training", "analysis"]),
    ("commands", ["toolkit.cli", "toolkit.launch", "toolkit.__main__", "toolkit.tools", "toolkit"]),
]
PACKAGES = ("toolkit", "analysis")


@dataclass(frozen=True)
class Violation:
    where: str  # file:line
    importer: str
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported}: {self.reason}"


def floor_of(module: str) -> tuple[int, str]:
    """(floor index, the prefix that placed it): the longest listed prefix wins."""
    best = None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    if best is None:
        raise KeyError(f"{module} is on no floor: add it to toolkit/tools/layers.py FLOORS")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of our packages in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from toolkit import lora` imports toolkit.lora, not the package's __init__
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(root, base, alias.name) else base)
                      for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _is_module(root: Path, package: str, name: str) -> bool:
    base = root.joinpath(*package.split("."))
    return (base / f"{name}.py").exists() or (base / name / "__init__.py").exists()


def our_imports(root: Path):
    """(path, importing module, line, imported module) for every import of our packages in our tree."""
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(path, root)
            for line, imported in imports_of(path, importer, root):
                yield path, importer, line, imported


def check(root: Path) -> list[Violation]:
    """Upward imports, and cycles between the prefixes of one floor."""
    violations, edges = [], {}
    for path, importer, line, imported in our_imports(root):
        (low, low_prefix), (high, high_prefix) = floor_of(importer), floor_of(imported)
        where = f"{path.relative_to(root)}:{line}"
        if high > low:
            violations.append(Violation(where, importer, imported,
                                        f"upward, from '{FLOORS[low][0]}' to '{FLOORS[high][0]}'"))
        elif high == low and high_prefix != low_prefix:
            edges.setdefault((low_prefix, high_prefix), where)
    for (a, b), where in sorted(edges.items()):
        if (b, a) in edges and a < b:
            violations.append(Violation(where, a, b, f"cycle on one floor (and back at {edges[(b, a)]})"))
    return violations


def import_graph(root: Path) -> dict[str, set[str]]:
    """{prefix: the other prefixes (FLOORS' names) its modules import}: the house's import graph."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:  # every module's prefix appears, importing ours or not
        for path in (root / package).rglob("*.py"):
            graph.setdefault(floor_of(module_name(path, root))[1], set())
    for _, importer, _, imported in our_imports(root):
        graph[floor_of(importer)[1]].add(floor_of(imported)[1])
    return {prefix: imported - {prefix} for prefix, imported in graph.items()}


def print_graph(root: Path) -> None:
    """Floor by floor, top first: each prefix and what it imports."""
    graph = import_graph(root)
    for index in reversed(range(len(FLOORS))):
        name, prefixes = FLOORS[index]
        print(f"floor {index} ({name})")
        for prefix in prefixes:
            if prefix in graph:
                print(f"  {prefix} -> {', '.join(sorted(graph[prefix])) or '(nothing of ours)'}")


def main(argv: list[str] | None = None) -> int:
    """`python -m toolkit.tools.layers [--graph]`: check the floors; --graph also prints the import graph."""
    root = Path(__file__).resolve().parents[2]
    if "--graph" in (sys.argv[1:] if argv is None else argv):
        print_graph(root)
    violations = check(root)
    for violation in violations:
        print(violation)
    print(f"{len(violations)} import(s) against the floors" if violations else "imports point downward")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
