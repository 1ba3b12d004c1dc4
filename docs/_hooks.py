"""mkdocs hook: the suite TOML reference is generated from the code's own schema at build time."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MARK = "<!-- tlprobes:suite-schema -->"


def _type(t) -> str:
    if isinstance(t, list):
        return f"list of {t[0].__name__}"
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return getattr(t, "__name__", "any")


def _table(rows) -> str:
    out = ["| key | type | default |", "|---|---|---|"]
    for key, (t, default) in rows.items():
        d = "required" if default is None else f"`{default!r}`"
        out.append(f"| `{key}` | {_type(t)} | {d} |")
    return "\n".join(out)


def schema_markdown() -> str:
    from tlprobes.suites import _schema
    from tlprobes.suites._registry import STUDIES, get_study

    parts = []
    for section, keys in _schema._SCHEMA.items():
        if not keys:
            continue
        parts.append(f"### `[{section}]`\n\n{_table(keys)}\n")
    parts.append("### `[analysis]`, per study\n")
    for name in STUDIES:
        study = get_study(name)
        mod = importlib.import_module(type(study).__module__)
        doc = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
        parts.append(f"#### `study = \"{name}\"`\n\n{doc}\n\n{_table(study.schema)}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001
    if MARK in markdown:
        markdown = markdown.replace(MARK, schema_markdown())
    return markdown
