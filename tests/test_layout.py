"""The two wings: the library never imports the command line, the command line uses the
library's public names only, and no module imports itself through others (imports
inside functions count)."""
import ast
import os
import subprocess
import sys

import advnlp

SRC = os.path.dirname(os.path.dirname(os.path.abspath(advnlp.__file__)))


def _modules():
    mods = {}
    for folder, _, files in os.walk(os.path.join(SRC, "advnlp")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _imports(name, path, mods):
    """(imported module, imported name or None) for every import in the file."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rsplit(".", 1)[0]
            mod = (base + ("." + node.module if node.module else "")) if node.level else node.module
            for a in node.names:
                full = f"{mod}.{a.name}"
                yield (full, None) if full in mods else (mod, a.name)


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _ in _imports(m, path, mods):
            while target and target not in mods:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            # a package's own __init__ importing its submodules is not a circle
            if target and target != m and not m.startswith(target + "."):
                graph[m].add(target)
    return mods, graph


def test_the_library_never_imports_the_command_line():
    mods, graph = _graph()
    library = [m for m in mods if not m.startswith("advnlp.cli")]
    offenders = {m: sorted(t for t in graph[m] if t.startswith("advnlp.cli")) for m in library}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_command_line_uses_public_library_names_only():
    mods = _modules()
    bad = []
    for m, path in mods.items():
        if not m.startswith("advnlp.cli"):
            continue
        for target, name in _imports(m, path, mods):
            if target.startswith("advnlp") and not target.startswith("advnlp.cli"):
                parts = target.split(".") + ([name] if name else [])
                if any(p.startswith("_") and p != "__version__" for p in parts):
                    bad.append((m, target, name))
    assert bad == []


def test_no_import_circle():
    mods, graph = _graph()
    seen, on_path, circles = set(), [], []

    def visit(m):
        if m in on_path:
            circles.append(on_path[on_path.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        on_path.append(m)
        for t in sorted(graph[m]):
            visit(t)
        on_path.pop()

    for m in sorted(mods):
        visit(m)
    assert circles == []


def test_importing_the_whole_library_loads_no_command_line_module():
    code = ("import sys, advnlp, advnlp.attacks, advnlp.integrations.transformers; "
            "print([m for m in sys.modules if m.startswith('advnlp.cli')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
