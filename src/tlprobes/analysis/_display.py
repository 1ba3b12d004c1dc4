"""How analyzer results look in a notebook: a short ``repr``, a compact HTML card and ``.plot()``.

Every result class gets these through :class:`~tlprobes.analysis._tables.FrameMixin`:

- ``repr(result)`` names the class and each field's shape or value in one line (no array dumps);
- ``result._repr_html_()`` is a one-line summary and a small table (at most 12 rows and 8 columns
  of the tidy frame, numbers with 3-4 significant digits, counts as integers);
- ``result.plot()`` returns a matplotlib figure that shows itself inline (no ``%matplotlib``).

    >>> import numpy as np
    >>> from tlprobes.analysis import layer_summary
    >>> s = layer_summary(np.arange(12.0).reshape(4, 3) * 10)    # 4 layers x 3 items
    >>> repr(s)[:40]
    'LayerSummary(n=[4] int64, mean=[4] float'
    >>> "<table" in s._repr_html_() and len(s._repr_html_()) < 4000
    True
    >>> fig = s.plot(); hasattr(fig, "_repr_png_")
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .._errors import InputError

__all__ = ["short_repr", "summary_html", "plot_result", "fmt_number"]

_MAX_ROWS = 12
_MAX_COLS = 8
# which statistics a small table shows first (means and adjusted p-values before spreads and counts)
_PRIORITY = {"mean": 0, "mean_diff": 0, "value": 0, "r": 0, "p_fdr_bh": 1, "d_z": 2, "hedges_g": 2,
             "median": 3, "ci_low": 4, "ci_high": 4, "sd": 5, "sem": 5, "n": 6}


def fmt_number(v: Any) -> str:
    """A number for people: integers as integers, others with 4 significant digits, NaN as ``-``.

    >>> [fmt_number(x) for x in (60.0, 0.000123456, 12.3456789, float("nan"), 3e9, True)]
    ['60', '0.0001235', '12.35', '-', '3e+09', 'True']
    """
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10_000 else str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "-"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f.is_integer() and abs(f) < 1e6:
        return str(int(f))
    return f"{f:.4g}"


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray):
        shape = "x".join(map(str, v.shape)) or "scalar"
        return f"[{shape}] {v.dtype}" if v.ndim else fmt_number(v.item())
    if hasattr(v, "shape") and hasattr(v, "dtype"):  # torch
        return f"[{'x'.join(map(str, tuple(v.shape)))}] {v.dtype}"
    if isinstance(v, dict):
        keys = list(v)
        shown = ", ".join(map(str, keys[:4])) + (", ..." if len(keys) > 4 else "")
        return "{" + shown + "}"
    if isinstance(v, (list, tuple)):
        return f"<{len(v)} items>"
    if isinstance(v, (float, int, np.floating, np.integer, bool)):
        return fmt_number(v)
    if isinstance(v, str):
        return repr(v if len(v) <= 30 else v[:27] + "...")
    if dataclasses.is_dataclass(v):
        return type(v).__name__
    return type(v).__name__


def short_repr(obj: Any, width: int = 240) -> str:
    """``Class(field=shape-or-value, ...)`` on one line, cut at ``width`` characters."""
    parts = []
    for f in dataclasses.fields(obj):
        if f.name == "settings":
            continue
        parts.append(f"{f.name}={_describe(getattr(obj, f.name))}")
    text = f"{type(obj).__name__}({', '.join(parts)})"
    return text if len(text) <= width else text[: width - 4] + "...)"


def _summary_line(obj: Any) -> str:
    bits = []
    layers = getattr(obj, "layers", None)
    if isinstance(layers, np.ndarray) and layers.size:
        bits.append(f"{layers.size} layers ({fmt_number(layers.min())}-{fmt_number(layers.max())})")
    for name in ("summary", "tests", "angles"):
        d = getattr(obj, name, None)
        if isinstance(d, dict) and d:
            bits.append(f"groups: {', '.join(map(str, d))}")
            break
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool):
            bits.append(f"{f.name} {fmt_number(v)}")
        elif isinstance(v, bool):
            bits.append(f"{f.name} {v}")
    return "; ".join(bits[:8])


def _small_table(obj: Any) -> tuple[str, str]:
    """(HTML table, note) of the tidy frame, pivoted to layers x (group, statistic) when it can."""
    from ..render._escape import escape_html

    df = obj.to_frame()
    note = ""
    if {"layer", "group", "statistic", "value"} <= set(df.columns) and len(df):
        wide = df.pivot_table(
            index="layer", columns=["group", "statistic"], values="value", aggfunc="first",
            sort=False,
        )
        cols = sorted(wide.columns, key=lambda c: _PRIORITY.get(str(c[1]), 9))  # stable
        if len(cols) > _MAX_COLS:
            note = f"{len(cols) - _MAX_COLS} more columns"
            cols = cols[:_MAX_COLS]
        header = ["layer"] + [
            f"{g} {s}" if str(g) not in ("", "all") else str(s) for g, s in cols
        ]
        index = list(wide.index)
        rows = [
            [fmt_number(i) if i != -1 else "-"] + [fmt_number(wide.loc[i, c]) for c in cols]
            for i in index
        ]
    else:
        header = [str(c) for c in df.columns[:_MAX_COLS]]
        rows = [[fmt_number(v) for v in r] for r in df.iloc[:, :_MAX_COLS].itertuples(index=False)]
        if df.shape[1] > _MAX_COLS:
            note = f"{df.shape[1] - _MAX_COLS} more columns"
    if len(rows) > _MAX_ROWS:
        half = _MAX_ROWS // 2
        skipped = len(rows) - 2 * half
        rows = rows[:half] + [["..."] * len(header)] + rows[-half:]
        note = "; ".join(filter(None, [note, f"{skipped} rows not shown"]))
    head = "".join(f"<th>{escape_html(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape_html(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    style = "border-collapse:collapse;font-size:12px"
    return f'<table class="tlp-card-table" style="{style}"><tr>{head}</tr>{body}</table>', note


def summary_html(obj: Any) -> str:
    """A compact notebook card: the class, a summary line, a small table, how to get the rest."""
    from ..render._escape import escape_html

    table, note = _small_table(obj)
    foot = "full table: .to_frame(); figure: .plot()" + (f" ({note})" if note else "")
    return (
        '<div class="tlp-card">'
        f"<strong>{escape_html(type(obj).__name__)}</strong> "
        f"<span>{escape_html(_summary_line(obj))}</span>{table}"
        f'<div style="color:#666;font-size:11px">{escape_html(foot)}</div></div>'
    )


# -- plots ----------------------------------------------------------------------------------------


def _curves(
    summary: dict[str, Any], n: int | None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-layer (mean, CI) curves; summaries of another length (totals, ...) are left out."""
    out = {}
    for k, s in summary.items():
        mean = np.atleast_1d(np.asarray(s.mean, dtype=float))
        if n is None:
            n = mean.shape[0]
        if mean.shape == (n,):
            out[str(k)] = (mean, np.asarray(s.ci_low, float), np.asarray(s.ci_high, float))
    return out


def _significant(obj: Any) -> np.ndarray | None:
    tests = getattr(obj, "tests", None)
    if isinstance(tests, dict) and tests:
        first = next(iter(tests.values()))
        return np.asarray(first.reject_fdr_bh, dtype=bool)
    test = getattr(obj, "test", None)
    if test is not None and hasattr(test, "reject_fdr_bh"):
        return np.asarray(test.reject_fdr_bh, dtype=bool)
    return None


def _scalar_bars(obj: Any, title: str) -> Any:
    from ..render._plots import _figure

    names, vals = [], []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool):
            if np.isfinite(v):
                names.append(f.name)
                vals.append(float(v))
    fig, (ax,) = _figure((6.0, 0.5 + 0.45 * max(len(names), 1)))
    ax.barh(names[::-1], vals[::-1], color="#1f77b4")
    for i, v in enumerate(vals[::-1]):
        ax.annotate(fmt_number(v), (v, i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize="small")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return fig


def _frame_lines(obj: Any, title: str) -> Any:
    """Fallback: every per-layer series of the tidy frame as a line."""
    from ..render._plots import _figure

    df = obj.to_frame()
    fig, (ax,) = _figure((7.0, 4.0))
    per_layer = df[df["layer"] >= 0] if "layer" in df else df.iloc[0:0]
    if per_layer.empty:
        return _scalar_bars(obj, title)
    for (g, s), part in per_layer.groupby(["group", "statistic"], sort=False):
        ax.plot(part["layer"], part["value"], marker="o", markersize=3, label=f"{g} {s}")
    ax.set_xlabel("layer")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return fig


_YLABELS = {"AngleTrajectory": "angle (degrees)", "WithinLayerAngles": "angle (degrees)"}


def plot_result(obj: Any, **kwargs: Any) -> Any:
    """The natural figure for an analyzer result (see each class's ``plot``)."""
    from ..render import _plots as P

    name = type(obj).__name__
    title = kwargs.pop("title", None) or name
    if name == "LayerSummary":
        return P.plot_angle_trajectories(
            {"mean": (obj.mean, obj.ci_low, obj.ci_high)}, ylabel="value", title=title, **kwargs
        )
    if name == "PairedTest":
        return P.plot_angle_trajectories(
            {"mean difference": (obj.mean_diff, obj.ci_low, obj.ci_high)},
            significant=np.asarray(obj.reject_fdr_bh, dtype=bool), ylabel="mean difference",
            sig_label="FDR-adjusted p < alpha", title=title, **kwargs,
        )
    if name == "PCAResult":
        return P.plot_scree(obj.explained_variance_ratio, title=title, **kwargs)
    if name == "Spectrum":
        return P.plot_scree(obj.explained, title=title, **kwargs)
    if name == "TSNEResult":
        return P.plot_scatter(obj.embedding, method="t-SNE", title=title, **kwargs)
    if name == "StateSpace":
        return P.plot_trajectories(
            obj.group_means[..., :2], group_labels=obj.groups,
            layer_labels=[str(x) for x in obj.layers], title=title, **kwargs,
        )
    if name == "RSAResult":
        return P.plot_cosine_heatmap(
            np.corrcoef(obj.rdm_x, obj.rdm_y) if obj.rdm_x.ndim == 1 else obj.rdm_x,
            colorbar_label="dissimilarity", title=f"{title}: r = {fmt_number(obj.r)}",
            vmin=float(np.nanmin(obj.rdm_x)), vmax=float(np.nanmax(obj.rdm_x)), **kwargs,
        )
    if name in ("HeadRanking", "HeadContrast"):
        contrast = name == "HeadContrast"
        return P.plot_head_heatmap(
            obj.diff["mean"] if contrast else obj.mean, marks=obj.reject if contrast else None,
            head_labels=list(obj.parts), title=title,
            colorbar_label=f"{obj.statistic}: target - baseline" if contrast
            else f"mean {obj.statistic}", **kwargs,
        )
    if name == "StepDecomposition":
        return P.plot_path_decomposition(
            np.nanmean(obj.attn_proj, axis=tuple(range(1, obj.attn_proj.ndim))),
            np.nanmean(obj.mlp_proj, axis=tuple(range(1, obj.mlp_proj.ndim))),
            layers=[str(x) for x in obj.layers], ylabel="mean projection on the step",
            title=title, **kwargs,
        )
    summary = getattr(obj, "summary", None)
    layers = getattr(obj, "layers", None)
    n = len(layers) if isinstance(layers, np.ndarray) else None
    curves = (
        _curves(summary, n)
        if isinstance(summary, dict) and all(hasattr(s, "ci_low") for s in summary.values())
        else {}
    )
    if curves:
        sig = _significant(obj)
        return P.plot_angle_trajectories(
            curves, significant=sig if sig is not None and sig.shape == (n,) else None,
            layers=None if layers is None else [str(x) for x in layers],
            ylabel=_YLABELS.get(name) or str(getattr(obj, "statistic", "") or "value"),
            title=title, **kwargs,
        )
    if kwargs:
        raise InputError(f"{name}.plot() takes only title=; got {sorted(kwargs)}")
    return _frame_lines(obj, title)
