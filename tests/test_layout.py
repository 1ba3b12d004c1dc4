"""TransformerLens is known in ``src/tlprobes/_tl/`` alone (issue #12).

Every module under ``src/tlprobes`` is scanned with ``ast`` (nothing is imported):

* only ``_tl/`` may import ``transformer_lens`` or ``transformers``: module-level and
  function-level imports count, and so do ``importlib.import_module("transformer_lens...")`` and
  ``__import__``;
* outside ``_tl/`` no code touches a TL object's attributes: attribute access named like one
  (:data:`TL_ATTRIBUTES`) is flagged on any object, and so is ``getattr``/``hasattr``/``setattr``
  with such a name as a constant. Code outside ``_tl/`` asks the adapter (``embed_weight``,
  ``unembed_weight``, ``final_norm``, ``hf_tokenizer``, ...) instead;
* the grammar corpus and trainer (``models/training/``) are imported by nothing in the package.

Exceptions are listed in :data:`ALLOWED`, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tlprobes"

TL_PACKAGES = ("transformer_lens", "transformers")
TL_ATTRIBUTES = frozenset({
    "cfg", "W_E", "W_U", "W_pos", "tokenizer", "to_tokens", "to_str_tokens", "hook_dict",
    "run_with_hooks", "run_with_cache", "add_hook", "reset_hooks", "blocks", "ln_final", "unembed",
    "fwd_hooks",
})
_ATTR_CALLS = ("getattr", "hasattr", "setattr", "delattr")
_IMPORT_CALLS = ("import_module", "__import__")

#: (path prefix relative to src/tlprobes, kind of finding) -> why it is allowed
ALLOWED: dict[tuple[str, str], str] = {
    ("models/training/", "import"): (
        "the trainer builds the shipped models with transformers (GPT2LMHeadModel, a BPE "
        "tokenizer); it is not imported by the package (checked below), only by "
        "scripts/train_default.py and tests/test_models.py"
    ),
}


def _modules() -> list[tuple[str, str]]:
    return [(p.relative_to(SRC).as_posix(), p.read_text(encoding="utf-8"))
            for p in sorted(SRC.rglob("*.py"))]


def _is_tl(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in TL_PACKAGES  # type: ignore[union-attr]


def violations(rel: str, source: str) -> list[str]:
    """What module ``rel`` (path inside src/tlprobes) does that only ``_tl/`` may do."""
    if rel.startswith("_tl/"):
        return []
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            found += [("import", f"{node.lineno}: import {a.name}") for a in node.names if _is_tl(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_tl(node.module):
            found.append(("import", f"{node.lineno}: from {node.module} import ..."))
        elif isinstance(node, ast.Attribute) and node.attr in TL_ATTRIBUTES:
            found.append(("attribute", f"{node.lineno}: .{node.attr}"))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in _IMPORT_CALLS and isinstance(node.args[0].value, str) and _is_tl(node.args[0].value):
                found.append(("import", f"{node.lineno}: {name}({node.args[0].value!r})"))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _ATTR_CALLS and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in TL_ATTRIBUTES):
            found.append(("attribute", f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})"))
    return [f"{rel}:{what}" for kind, what in found
            if not any(rel.startswith(prefix) and kind == k for prefix, k in ALLOWED)]


def test_only_tl_knows_transformer_lens():
    bad = [v for rel, source in _modules() for v in violations(rel, source)]
    assert not bad, (
        "outside src/tlprobes/_tl/ nothing may import transformer_lens/transformers or touch a TL "
        "object's attributes; ask the adapter (tlprobes._tl.adapter) instead:\n  " + "\n  ".join(bad)
    )


def test_the_scan_has_something_to_scan():
    rels = {rel for rel, _ in _modules()}
    assert {"_tl/adapter.py", "_tl/hooks.py", "_tl/tokens.py", "_tl/loading.py", "_session.py",
            "capture/activation.py", "suites/studies/lens.py"} <= rels
    # the adapter itself does what the others may not: the scan looks at real TL code
    adapter = dict(_modules())["_tl/adapter.py"]
    assert violations("capture/_x.py", adapter)


@pytest.mark.parametrize("code, finding", [
    ("import transformer_lens\n", "import transformer_lens"),
    ("def f():\n    from transformers import AutoTokenizer\n", "from transformers import"),
    ("def f():\n    import transformer_lens.utils as u\n", "import transformer_lens.utils"),
    ("import importlib\nimportlib.import_module('transformer_lens.hook_points')\n", "import_module"),
    ("def f(model):\n    return model.W_E\n", ".W_E"),
    ("def f(m):\n    return m.cfg.n_layers\n", ".cfg"),
    ("def f(m):\n    return getattr(m, 'tokenizer', None)\n", "getattr(..., 'tokenizer')"),
    ("def f(p, fn):\n    p.add_hook(fn)\n", ".add_hook"),
    ("def f(m):\n    return m.blocks[0]\n", ".blocks"),
])
def test_the_scan_catches(code, finding):
    """Each kind of leak is flagged (e.g. ``import transformer_lens`` added to analysis/_rsa.py),
    also inside a function; the same code inside ``_tl/`` is allowed."""
    rsa = dict(_modules())["analysis/_rsa.py"]
    got = violations("analysis/_rsa.py", rsa + "\n\n" + code)
    assert len(got) == 1 and finding in got[0] and got[0].startswith("analysis/_rsa.py:")
    assert violations("_tl/adapter.py", code) == []


def test_training_is_allowed_its_imports_only():
    code = "def f():\n    import transformers\n    return transformers.AutoConfig\n"
    assert violations("models/training/train.py", code) == []
    assert violations("models/training/train.py", "def f(m):\n    return m.W_E\n")
    assert violations("models/_load.py", code)


def _imports_of(rel: str, source: str) -> list[str]:
    """Absolute names of every module ``rel`` imports (relative imports resolved)."""
    package = ["tlprobes", *rel.removesuffix(".py").split("/")[:-1]]
    if rel.endswith("__init__.py"):
        package = ["tlprobes", *rel.split("/")[:-1]]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]
    return out


def test_nothing_in_the_package_imports_the_trainer():
    users = [rel for rel, source in _modules() if not rel.startswith("models/training/")
             for name in _imports_of(rel, source) if name.startswith("tlprobes.models.training")]
    assert not users, f"the corpus/trainer must not be imported by the package: {users}"
    assert _imports_of("suites/x.py", "from ..models.training import corpus\n")[0] == (
        "tlprobes.models.training")


def test_models_exports_the_loader_only():
    import subprocess
    import sys

    code = ("import sys, tlprobes, tlprobes.models as tm, tlprobes.suites\n"
            "print(sorted(tm.__all__))\n"
            "print(sorted(m for m in sys.modules if m.startswith('tlprobes.models.training')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True).stdout.splitlines()
    assert out[0] == str(sorted(["SHIPPED_MODELS", "gguf_dir", "load_model", "model_dir",
                                 "shipped_models", "smollm2_gguf"]))
    assert out[1] == "[]"
