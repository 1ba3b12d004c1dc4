"""Layout rules of issue #12: no two modules import each other, and HTML is built in ``render/`` alone.

The import graph is read from the source with ``ast`` (module-level and function-level imports,
relative imports resolved), so a lazy import that runs back up counts as much as an eager one.
Imports under ``if TYPE_CHECKING:`` never run and name types only: they are left out.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "tlprobes"


def _modules(pkg: Path = PKG) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is_package)}`` of every module under ``pkg``."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``; ``from a import b`` points at ``a.b`` when
    that is a module, else at ``a``; imports of outside packages are left out."""
    mods = _modules(pkg)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - (node.level - 1)] + [node.module or ""])
                    base = base.rstrip(".")
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # tlprobes.x.name -> tlprobes.x
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def mutual_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]})


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _describe(graph: dict[str, set[str]], comp: list[str]) -> str:
    return "; ".join(f"{m} -> {sorted(graph[m] & set(comp))}" for m in comp)


def test_no_two_modules_import_each_other() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "tlprobes.render._views" in graph["tlprobes._display"]
    assert mutual_imports(graph) == []


def test_no_longer_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert found == [], "import cycles: " + " | ".join(_describe(graph, c) for c in found)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path) -> None:
    """The checks are not vacuous: a function-level import back up is a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("import pkg.a\nx = 1\n")
    (pkg / "d.py").write_text("def g():\n    from . import e\n")
    (pkg / "e.py").write_text("from .d import g\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert mutual_imports(graph) == [("pkg.d", "pkg.e")]
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.c", "pkg.sub.b"], ["pkg.d", "pkg.e"]]


# -- HTML is built in render/ alone ----------------------------------------------------------------

HTML_TAG = re.compile(
    r"<\s*/?\s*(div|table|span|script|style|p|tr|td|th|thead|tbody|h[1-6]|img|svg|pre|code|ul|li|"
    r"nav|figure|figcaption|details|summary|strong|br|a|b|i|em|html|head|body|meta|link|select|"
    r"option|button|canvas|iframe)[\s>/]",
    re.IGNORECASE,
)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def html_literals(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal (f-string parts too, docstrings not) with a tag."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    return [
        (node.lineno, node.value[:60])
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        and HTML_TAG.search(node.value)
    ]


def test_html_is_built_in_render_alone() -> None:
    outside = {
        str(path.relative_to(SRC)): hits
        for path in sorted(PKG.rglob("*.py"))
        if "render" not in path.relative_to(PKG).parts[:1]
        and (hits := html_literals(path))
    }
    assert outside == {}
    # ... and the scan finds what render builds
    assert html_literals(PKG / "render" / "_views.py") and html_literals(PKG / "render" / "_page.py")


def test_html_scan_is_not_vacuous(tmp_path) -> None:
    f = tmp_path / "m.py"
    f.write_text('"""Doc: <table> in a docstring is fine."""\n'
                 'def view(x):\n    """<div> here too."""\n'
                 '    return f\'<div class="c">{x}</div>\' + "<|endoftext|>" + "a < b"\n'
                 'CARD = "<P>hi"\n')
    assert sorted(line for line, _ in html_literals(f)) == [4, 4, 5]


def test_display_loads_render_only_when_shown() -> None:
    """``import tlprobes``, a run and ``repr`` of captures and results never load the renderers."""
    code = (
        "import sys, tlprobes as tp\n"
        "r = tp.run(tp.load_model(), ['The cat saw her.'], tp.Residual(), tp.Attention(), progress=False)\n"
        "repr(r), repr(r.attention), repr(tp.path_length(r.residual))\n"
        "assert not [m for m in sys.modules if m.startswith('tlprobes.render')], 'render loaded early'\n"
        "assert 'matplotlib' not in sys.modules\n"
        "html = r.attention._repr_html_()\n"
        "assert 'tlprobes.render._views' in sys.modules and html.startswith('<')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("old", ["Displayable", "HTMLDisplayMixin", "_build_page(self"])
def test_one_display_mixin(old: str) -> None:
    """The display classes of old are gone: captures, results and analyzer results use
    ``tlprobes._display.Display``, and only ``render/`` defines page builders."""
    hits = [str(p.relative_to(SRC)) for p in PKG.rglob("*.py")
            if old in p.read_text(encoding="utf-8") and "render" not in p.relative_to(PKG).parts[:1]
            and p.name != "_display.py"]
    assert hits == []


def test_the_one_mixin_shows_every_kind_of_object(tmp_path) -> None:
    """Captures, a run's Result and analyzer results all show through ``Display``; what has no
    view or figure says so, naming what has one."""
    import tlprobes as tp
    from tlprobes._display import Display
    from tlprobes._errors import ArgumentError, InputError

    res = tp.run(tp.load_model(), ["Mary saw her brother.", "John gave her a book."],
                 tp.Residual(), tp.Attention(layers=[0]), progress=False)
    lengths = tp.path_length(res.residual)
    doc = lengths.to_html()
    assert doc.startswith("<!DOCTYPE html>") and "tlp-card" in doc and "PathLength" in doc
    saved = lengths.save_html(tmp_path / "p.html").read_text(encoding="utf-8")
    assert saved.count('class="tlp-card"') == 1
    report = tp.Report("r").add_view(lengths).add_view(res.attention)
    assert "PathLength" in report.to_html() and report.to_html().count("var CircuitsVis=") == 1
    page = tp.render.Page("p").add_page(res)  # a Result builds a Report, which builds a Page
    assert "Attention (" in page.to_html() and "ResidualCapture (" in page.to_html()
    with pytest.raises(ArgumentError, match="AttentionCapture has no figure"):
        res.attention.plot()
    with pytest.raises(InputError, match=r"Result.view\(\) got unknown option\(s\) \['bogus'\]"):
        res.view(bogus=1)
    with pytest.raises(InputError, match=r"PathLength.view\(\) .* valid: none"):
        lengths.view(layer=1)

    class Bare(Display):
        pass

    with pytest.raises(ArgumentError, match="Bare has no default view; views exist for"):
        Bare()._repr_html_()
