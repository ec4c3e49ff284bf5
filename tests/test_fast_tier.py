"""The fast tier (`pytest -m "not slow"`) still imports every vit_se module.

Read statically from the test files: a module counts when a test that is not marked slow (or a
fixture or helper in a file that has such a test) imports it, runs it as `python -m` or in a
`python -c` program, or imports a module that imports it at its top level (module-level imports
always run; imports deferred into functions are not followed). What the slow tests add is
end-to-end runs, not modules.
"""

import ast
import os
import re

from test_layering import MODULES

TESTS = os.path.dirname(os.path.abspath(__file__))


def _is_slow(node):
    return any("slow" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def _vit_se_names(node):
    """vit_se module names a node imports (with `from pkg import mod` as pkg.mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def _module(name):
    """The vit_se module a dotted name is, or is inside; None outside vit_se."""
    if name != "vit_se" and not name.startswith("vit_se."):
        return None
    name = name.removeprefix("vit_se.") if name != "vit_se" else "vit_se"
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _fast_imports(path):
    """Modules the fast tests of one test file import or run."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    if any(
        isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n) and "slow" in ast.unparse(n)
        for n in tree.body
    ):
        return set()
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    tests = [n for n in functions if n.name.startswith("test_")]
    if all(_is_slow(t) for t in tests):
        return set()
    # Module level, fast tests, and everything else (fixtures and helpers) in the file.
    nodes = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    nodes += [f for f in functions if not (f.name.startswith("test_") and _is_slow(f))]
    found, strings, prefixes = set(), set(), set()
    for top in nodes:
        for node in ast.walk(top):
            names = _vit_se_names(node)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
                # `python -m vit_se.x` runs x, or x.__main__ for a package.
                names = re.findall(r"^vit_se(?:\.\w+)*$", node.value)
                names += [f"{n}.__main__" for n in names]
                # `python -c "import vit_se.x; ..."` (or `from vit_se.x import ...`) imports x.
                code_imports = r"\b(?:import|from)\s+(?:[\w.]+\s*,\s*)*(vit_se[\w.]*)"
                names += re.findall(code_imports, node.value)
            if isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if isinstance(first, ast.Constant) and str(first.value).startswith("vit_se."):
                    prefixes.add(first.value)  # importlib.import_module(f"vit_se.configs.{name}")
            found.update(m for m in map(_module, names) if m)
    for prefix in prefixes:  # ... over names the file spells out
        found.update(f"{prefix}{n}"[len("vit_se.") :] for n in strings)
    return found & set(MODULES)


def _top_level_imports(module):
    with open(MODULES[module]) as f:
        tree = ast.parse(f.read())
    package = (
        module.split(".") if MODULES[module].endswith("__init__.py") else module.split(".")[:-1]
    )
    found = set()
    for node in tree.body:
        names = _vit_se_names(node)
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(["vit_se", *package[: len(package) - node.level + 1]])
            mod = f"{base}.{node.module}" if node.module else base
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        found.update(m for m in map(_module, names) if m)
    # Importing a module imports its packages first.
    parts = module.split(".")
    found.update(
        ".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES
    )
    return found - {module}


def _closure(modules):
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_top_level_imports(m))
    return seen


def test_every_module_is_imported_by_a_fast_test():
    direct = set()
    for name in sorted(os.listdir(TESTS)):
        if name.startswith("test_") and name.endswith(".py"):
            direct |= _fast_imports(os.path.join(TESTS, name))
    missing = sorted(set(MODULES) - _closure(direct) - {"vit_se"})
    assert not missing, f"no test outside the slow tier imports {missing}"


def test_the_reading_sees_slow_marks_and_command_lines():
    # Guards the test itself: test_kfold's only fast test imports kfold; the analyze command line
    # is slow, and vit_se.main is run as a command by fast ones.
    kfold_tests = _fast_imports(os.path.join(TESTS, "test_kfold.py"))
    assert "kfold" in kfold_tests
    assert "main" in _fast_imports(os.path.join(TESTS, "test_run_checks.py"))
    assert "cpu_lean" in _closure({"models"})
    # test_export imports the timm loader only inside a `python -c` program.
    assert "timm_vit_se" in _fast_imports(os.path.join(TESTS, "test_export.py"))
