"""The shape of the house: the rooms of sslnlp/ and the directions imports may take between them, no import circle
(module- and function-level imports alike), no private name imported across modules, no function longer than 100
lines, and no objective's name tested outside the objective modules and the registry.

Each rule is also run against a small made-up package that breaks it, so a rule that could never fail is caught."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sslnlp"
MAX_FUNCTION_LINES = 100

# The base modules import nothing of sslnlp; each room may import the base and the rooms listed (data flows one way:
# text -> data -> models -> objectives -> training; evaluation and publishing read checkpoints; the loop knows all).
BASE = {"sslnlp.config", "sslnlp.console", "sslnlp.files", "sslnlp.runtime"}
ALLOWED_ROOMS = {
    "base": set(),
    "data": set(),
    "models": {"data"},
    "objectives": {"data", "models"},
    "evaluation": {"data", "models"},
    "publishing": {"data", "models", "objectives", "evaluation"},
    "training": {"data", "models", "objectives", "evaluation", "publishing"},
    "package": {"data", "models", "objectives", "evaluation", "publishing", "training"},  # sslnlp/__init__.py
    "cli": {"data", "models", "objectives", "evaluation", "publishing", "training", "package"},
}


def modules(package: Path = PACKAGE) -> dict[str, ast.Module]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(("sslnlp", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def room_of(module: str) -> str:
    """The room a module lives in: base, cli, package (the top __init__ and __main__) or its subpackage."""
    if module in BASE:
        return "base"
    if module in ("sslnlp.cli", "sslnlp.__main__"):
        return "cli"
    if module == "sslnlp":
        return "package"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED_ROOMS:
        return parts[1]
    raise AssertionError(f"{module} is a top-level module outside the base; put it in a room (see ALLOWED_ROOMS)")


def imports_of(tree: ast.Module) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslnlp"):
            out.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names if alias.name.startswith("sslnlp"))
    return out


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the sslnlp modules it imports (``from sslnlp.x import y`` counts sslnlp.x.y when that is a module)."""
    graph = {}
    for name, tree in trees.items():
        targets = set()
        for module, names in imports_of(tree):
            for imported in [module] + [f"{module}.{n}" for n in names]:
                if imported in trees and imported != name:
                    targets.add(imported)
        graph[name] = targets
    return graph


def wrong_directions(trees: dict[str, ast.Module]) -> list[str]:
    wrong = []
    for name, targets in import_graph(trees).items():
        room = room_of(name)
        for target in targets:
            target_room = room_of(target)
            if target_room != room and target_room != "base" and target_room not in ALLOWED_ROOMS[room]:
                wrong.append(f"{name} ({room}) imports {target} ({target_room})")
    return wrong


def circles(trees: dict[str, ast.Module]) -> list[str]:
    graph = import_graph(trees)
    graph.pop("sslnlp", None)  # the package's __init__ re-exports the public API; nothing inside imports it back
    for targets in graph.values():
        targets.discard("sslnlp")
    found, done = [], set()

    def visit(node, path):
        for target in graph.get(node, ()):
            if target in path:
                found.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target])
        done.add(node)

    for node in graph:
        visit(node, [node])
    return found


def private_imports(trees: dict[str, ast.Module]) -> list[str]:
    return [f"{name} imports private {n} from {module}" for name, tree in trees.items()
            for module, names in imports_of(tree) for n in names if n.startswith("_") and not n.startswith("__")]


def long_functions(trees: dict[str, ast.Module]) -> list[str]:
    return [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for name, tree in trees.items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def objective_names() -> set[str]:
    from sslnlp.objectives import objective_names as registered

    return set(registered())


def value_children(node: ast.AST) -> list[ast.AST]:
    """The expressions a node uses as values (not the members of a set or tuple of names, like model types)."""
    if isinstance(node, ast.Call):
        return [*node.args, *(k.value for k in node.keywords)]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return)) and node.value is not None:
        return [node.value]
    if isinstance(node, ast.BoolOp):
        return list(node.values)
    if isinstance(node, ast.IfExp):
        return [node.body, node.orelse]
    if isinstance(node, ast.arguments):
        return [*node.defaults, *(d for d in node.kw_defaults if d is not None)]
    if isinstance(node, ast.Dict):
        return list(node.values)
    return []


def objective_name_leaks(trees: dict[str, ast.Module], names: set[str]) -> list[str]:
    """Comparisons against an objective's name, or the name used as a value (a default, a fallback), outside
    sslnlp/objectives/."""
    leaks = set()
    for name, tree in trees.items():
        if name.startswith("sslnlp.objectives"):
            continue
        for node in ast.walk(tree):
            constants = []
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                constants = [v.value for v in values if isinstance(v, ast.Constant)]
                constants += [e.value for v in values if isinstance(v, (ast.Tuple, ast.List, ast.Set))
                              for e in v.elts if isinstance(e, ast.Constant)]
            else:  # a name as a value (a default, an argument, a fallback): defaults come from the registry
                constants = [c.value for c in value_children(node) if isinstance(c, ast.Constant)]
            if names & set(c for c in constants if isinstance(c, str)):
                leaks.add(f"{name}:{node.lineno}")
    return sorted(leaks)


def test_every_room_has_a_docstring_saying_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init} needs a docstring saying what the room owns and what it may import"


def test_imports_run_in_the_allowed_directions():
    assert not wrong_directions(modules())


def test_no_import_circle_and_no_private_imports():
    trees = modules()
    assert not circles(trees)
    assert not private_imports(trees)


def test_functions_fit_on_a_screen():
    assert not long_functions(modules())


def test_no_objective_name_is_tested_outside_the_objectives():
    names = objective_names()
    assert {"mlm", "clm", "electra", "simcse"} <= names  # taken from the registry, so a new objective is covered
    assert not objective_name_leaks(modules(), names)


# ------------------------------------------------------------------ each rule, broken on purpose, must fail


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("importer,imported", [
    ("data/packing.py", "from sslnlp.training.loop import pretrain"),
    ("data/packing.py", "from sslnlp.evaluation.tasks import load_task"),
    ("objectives/mlm.py", "from sslnlp.evaluation.features import pool"),
    ("evaluation/probing.py", "import sslnlp.cli"),
    ("training/loop.py", "from sslnlp.cli import main"),
    ("config.py", "from sslnlp.data.corpus import Corpus"),
])
def test_a_wrong_direction_is_caught(tmp_path, importer, imported):
    files = {"__init__.py": "", "config.py": "", "cli.py": "", "data/__init__.py": "", "data/corpus.py": "",
             "data/packing.py": "", "evaluation/__init__.py": "", "evaluation/tasks.py": "",
             "evaluation/features.py": "", "evaluation/probing.py": "", "objectives/__init__.py": "",
             "objectives/mlm.py": "", "training/__init__.py": "", "training/loop.py": ""}
    files[importer] = imported + "\n"
    trees = modules(write_package(tmp_path / "sslnlp", files))
    assert len(wrong_directions(trees)) == 1


def test_a_circle_a_private_import_a_long_function_and_a_name_leak_are_caught(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    trees = modules(write_package(tmp_path / "sslnlp", {
        "__init__.py": "", "data/__init__.py": "",
        "data/a.py": "from sslnlp.data.b import _helper\n",
        "data/b.py": "def f():\n    from sslnlp.data import a\n",
        "data/c.py": f"def long():\n{body}\n",
        "data/d.py": "def f(config):\n    return config.name == 'electra'\n",
        "data/e.py": "DEFAULT = 'simcse'\nKINDS = {'electra', 'bert'}  # model types, not objectives\n",
        "data/f.py": "def f(values):\n    return values.get('name', 'mlm')\n",
    }))
    assert circles(trees)
    assert private_imports(trees) == ["sslnlp.data.a imports private _helper from sslnlp.data.b"]
    assert long_functions(trees) == [f"sslnlp.data.c.long: {MAX_FUNCTION_LINES + 1} lines"]
    assert objective_name_leaks(trees, objective_names()) == ["sslnlp.data.d:2", "sslnlp.data.e:1", "sslnlp.data.f:2"]
