"""Helpers shared by the studies: reading tidy tables back into per-layer arrays, report scaffolding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["series", "curve", "new_report", "pivot"]


def series(df: pd.DataFrame, group: str, stat: str) -> tuple[np.ndarray, np.ndarray]:
    """``(layers, values)`` of one (group, statistic) of a tidy table, ordered by layer."""
    sel = df[(df["group"] == group) & (df["statistic"] == stat)].sort_values("layer")
    return sel["layer"].to_numpy(), sel["value"].to_numpy(dtype=float)


def curve(df: pd.DataFrame, group: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, ci_low, ci_high)`` per layer of a group summarised with a LayerSummary."""
    return tuple(series(df, group, s)[1] for s in ("mean", "ci_low", "ci_high"))  # type: ignore[return-value]


def pivot(df: pd.DataFrame, wanted: list[tuple[str, str]]) -> pd.DataFrame:
    """A wide table (one row per layer) of chosen (group, statistic) pairs, for the report
    (which prints 4 significant digits, so small p-values stay readable)."""
    cols = {}
    for group, stat in wanted:
        layers, vals = series(df, group, stat)
        cols[f"{group} {stat}"] = pd.Series(vals, index=layers)
    out = pd.DataFrame(cols)
    out.index.name = "layer"
    return out.reset_index()


def new_report(manifest: dict[str, Any], heading: str, text: str) -> Any:
    from ...render import Report

    suite = manifest.get("suite", {})
    model = manifest.get("model", {})
    facts = {
        "suite": suite.get("name"),
        "study": suite.get("study"),
        "model": model.get("requested") or model.get("model_name"),
        "model kind": model.get("model_kind"),
        "mode": manifest.get("mode"),
        "TransformerLens": manifest.get("tl_version"),
        "prompts": f"{suite.get('n_prompts')} from {suite.get('prompts_file', '').split('/')[-1]}",
        "target": repr(suite.get("target")) if suite.get("target") else "-",
        "seed": manifest.get("seed"),
        "created": manifest.get("created"),
        "timings (s)": manifest.get("timings_s"),
        "settings": suite.get("analysis"),
        "packages": manifest.get("packages"),
    }
    report = Report(suite.get("title") or heading, facts)
    report.add_text(text)
    return report
