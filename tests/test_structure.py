"""The shape of the house (issue 14): no import circle in sslnlp/ (module- and function-level imports alike), no
private name imported across modules, no function longer than 100 lines, and no objective's name tested outside the
objective modules and the registry."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sslnlp"
OBJECTIVE_NAMES = {"mlm", "clm"}  # the built-ins; a test of either outside sslnlp/objectives/ is a leak
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("sslnlp", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def imports_of(tree: ast.Module) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslnlp"):
            out.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names if alias.name.startswith("sslnlp"))
    return out


def test_no_import_circle_and_no_private_imports():
    trees = modules()
    graph = {}
    for name, tree in trees.items():
        targets = set()
        for module, names in imports_of(tree):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{name} imports private {private} from {module}"
            for imported in [module] + [f"{module}.{n}" for n in names]:
                if imported in trees and imported != name and imported != "sslnlp":
                    targets.add(imported)
        graph[name] = targets
    graph.pop("sslnlp")  # the package's __init__ re-exports the public API; nothing inside imports it back

    def visit(node, path):
        for target in graph.get(node, ()):
            assert target not in path, "import circle: " + " -> ".join(path[path.index(target):] + [target])
            visit(target, path + [target])

    for node in graph:
        visit(node, [node])


def test_functions_fit_on_a_screen():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def test_no_objective_name_is_tested_outside_the_objectives():
    leaks = []
    for name, tree in modules().items():
        if name.startswith("sslnlp.objectives"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                constants = [v.value for v in values if isinstance(v, ast.Constant)]
                constants += [e.value for v in values if isinstance(v, (ast.Tuple, ast.List, ast.Set))
                              for e in v.elts if isinstance(e, ast.Constant)]
                if OBJECTIVE_NAMES & set(c for c in constants if isinstance(c, str)):
                    leaks.append(f"{name}:{node.lineno}")
    assert not leaks, leaks
