"""Import direction: every module's imports (parsed, not run) follow docs/architecture.md.

core ← recognise ← calibrate ← quantizer ← verify ← api ← cli; passes may import core, recognise
and plugins; plugins and models only core; nothing imports the cli; no module-level import loop.
Imports under `if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed name -> source folder (pyproject's package-dir)
SOURCES = {"onnxvq": ROOT / "onnxvq", "onnxvq.passes": ROOT / "passes",
           "onnxvq.plugins": ROOT / "plugins", "onnxvq.models": ROOT / "models"}
_CHAIN = ("core", "recognise", "calibrate", "quantizer", "verify", "api", "cli")
ALLOWED = {
    "core": {"core"},
    "plugins": {"core", "plugins"},
    "models": {"core", "models"},
    "recognise": {"core", "recognise"},
    "passes": {"core", "recognise", "plugins", "passes"},
    "calibrate": {"core", "recognise", "plugins", "calibrate"},
    "quantizer": {"core", "recognise", "plugins", "calibrate", "passes", "quantizer"},
    "verify": {"core", "recognise", "plugins", "calibrate", "passes", "quantizer", "models",
               "verify"},
    "api": set(_CHAIN) - {"cli"} | {"passes", "plugins", "models"},
    "cli": set(_CHAIN) | {"passes", "plugins", "models"},
}


def layer(module: str) -> str:
    """The layer of an onnxvq module: its stage subpackage, or api for the package root."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("api", "demo", "__main__"):
        return "api"
    return parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            if any(p.startswith(".") or p in ("build", "tests") for p in rel.parts):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "onnxvq" and parts and parts[0] in ("passes", "plugins", "models"):
                continue
            found[name] = path
    return found


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The onnxvq modules `module` imports anywhere (inside functions too), except under
    `if TYPE_CHECKING:` (annotations) and `if __name__ == "__main__":` (a script entry point)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _not_an_import_site(child.test):
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, package)
                for a in child.names:  # `from pkg import module` depends on the module only
                    out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
            visit(child)

    visit(tree)
    return {m for m in out if m in known}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _not_an_import_site(test: ast.expr) -> bool:
    if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name):
        return test.left.id == "__name__"  # if __name__ == "__main__":
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        edges[name] = imports(path, name, set(mods)) - {name}
    return edges


def test_the_scan_sees_the_tree():
    edges = graph()
    assert {"onnxvq.core.pipeline", "onnxvq.passes.pipelines", "onnxvq.plugins.ops",
            "onnxvq.models.corpus", "onnxvq.cli.app", "onnxvq"} <= set(edges)
    assert "onnxvq.core.pipeline" in edges["onnxvq.passes.fuse_layernorm"]
    assert "onnxvq.passes.pipelines" in edges["onnxvq.quantizer.run"]


def test_imports_follow_the_layers():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if layer(dep) not in ALLOWED[layer(mod)] or (dep == "onnxvq" and layer(mod) != "cli"):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "forbidden imports:\n" + "\n".join(sorted(bad))


def test_nothing_imports_the_cli():
    users = [m for m, deps in graph().items() if layer(m) != "cli"
             and any(layer(d) == "cli" for d in deps)]
    assert users == []


def test_no_import_loops():
    edges = graph()
    loops = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                loops.append(" -> ".join(stack[stack.index(dep):] + [node, dep]))
            elif dep not in state:
                walk(dep, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [])
    assert not loops, "import loops:\n" + "\n".join(loops)


@pytest.mark.parametrize(("mod", "dep", "ok"), [
    ("onnxvq.passes.x", "onnxvq.quantizer.placement", False),
    ("onnxvq.core.x", "onnxvq.plugins.native", False),
    ("onnxvq.quantizer.run", "onnxvq.passes.pipelines", True),
    ("onnxvq.verify.x", "onnxvq.cli.app", False),
])
def test_rules_refuse_what_they_should(mod, dep, ok):
    assert (layer(dep) in ALLOWED[layer(mod)]) is ok


def test_the_architecture_doc_names_every_declared_pass():
    from onnxvq.passes import pipelines

    doc = (ROOT / "docs" / "architecture.md").read_text()
    declared = {p.id for pl in (pipelines.TENSORRT_CANONICAL, pipelines.FULLY_QUANTIZED)
                for p in pl.passes}
    assert {i for i in declared if i not in doc} == set()
    for name in ("CANONICAL", "TENSORRT_CANONICAL", "W8A8", "PTS_W8A8", "LIS_W8A8",
                 "FULLY_QUANTIZED"):
        assert name in doc and isinstance(getattr(pipelines, name), pipelines.Pipeline)


def test_every_pass_has_its_test_module():
    missing = []
    for path in sorted((ROOT / "passes").glob("*.py")):
        classes = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)]
        is_pass = any(getattr(b, "id", None) in ("Pass", "RewritePass") for c in classes
                      for b in c.bases)
        if is_pass and not (ROOT / "tests" / "passes" / f"test_{path.name}").exists():
            missing.append(path.name)
    assert missing == []
