"""Every default view in one place: what a capture, a run's ``Result`` or an analyzer result shows.

:class:`tlprobes._display.Display` asks this module when an object is shown; the dispatch goes
from the object's class (by name, up its MRO) to its view, so nothing here imports a capture or
an analyzer, and nothing there builds HTML:

- a run's ``Result``: one report, the manifest, then each capture's view;
- ``AttentionCapture``: head summaries of one prompt, then prompt / layer / head selectors;
- ``LogitLensCapture``: the top token of every state, per prompt;
- ``HeadStepsCapture``: layer x part heatmaps of the mean angle share, step projection and DLA;
- any other capture at selected positions: its tokens coloured by the capture's own metrics;
- an analyzer result (anything with ``to_frame``): a compact card in a notebook (a summary line
  and at most 12 rows x 8 columns of the tidy frame, numbers with 3-4 significant digits) and a
  natural figure for ``.plot()``.

    >>> import numpy as np
    >>> from tlprobes.analysis import layer_summary
    >>> card = summary_card(layer_summary(np.arange(12.0).reshape(4, 3) * 10))
    >>> card.startswith('<div class="tlp-card">') and "<th>mean</th>" in card
    True
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._errors import ArgumentError, InputError, LayerError, choices
from .._format import fmt_number
from . import _plots as P
from ._attention import attention_overview, attention_prompts_view, head_summaries
from ._escape import escape_html
from ._page import Page
from ._plots import _figure, figure_to_html
from ._report import Report
from ._repr import notebook_fragment
from ._tokens import logit_lens_table, token_view

__all__ = ["default_page", "figure_of", "notebook_html", "page_of", "result_figure", "summary_card"]


# -- pages of captures and results ------------------------------------------------------------------


def result_page(result: Any) -> Report:
    """One report: the manifest, then each capture's own view."""
    meta = result.meta
    report = Report(f"tlprobes: {meta.model_name}", {**meta.to_dict(), **result.settings})
    for name, capture in result.items():
        if hasattr(capture, "_build_page"):
            report.add_view(capture._build_page(), caption=f"capture {name!r}")
    return report


def captured_page(cap: Any) -> Page:
    """The selected tokens of the first prompts, coloured by the capture's metrics."""
    name = type(cap).__name__
    page = Page(name)
    page.add_heading(f"{name} ({cap.meta.model_name}, {cap.meta.mode})")
    metrics = cap._token_metrics()
    strs = cap.selected_str_tokens()
    for b in range(min(4, cap.mask.shape[0])):
        keep = cap.mask[b]
        values = {k: v[b].double().numpy() for k, v in metrics.items()}
        if values:
            page.add_page(token_view(strs[b], values, mask=keep.numpy(), label=f"prompt {b}"))
    return page


def attention_page(cap: Any, prompt: int = 0, layer: int | None = None) -> Page:
    """Head summaries of one prompt, then prompt / layer / head selectors (first 16 prompts)."""
    n = cap.layer_patterns[0].shape[0]
    if not 0 <= prompt < n:
        raise InputError(f"prompt {prompt!r} is not in this capture; choose from {choices(range(n))}")
    if layer is not None and layer not in cap.layers:
        raise LayerError(f"layer {layer!r} was not captured; captured layers: {choices(cap.layers)}")
    mask = cap.mask[prompt].numpy()
    page = Page("Attention")
    page.add_heading(f"Attention ({cap.meta.model_name}, {cap.meta.mode})")
    if cap.positions is not None:
        return _attention_rows_page(cap, page, prompt)
    pat = torch.stack([p[prompt] for p in cap.layer_patterns]).double().numpy()
    page.add_page(attention_overview(head_summaries(pat, mask), layer_labels=list(cap.layers),
                                     head_labels=list(cap.heads),
                                     title=f"Head overview, prompt {prompt}"))
    shown = sorted(set(range(min(n, 16))) | {prompt})
    strs, keep = cap.str_tokens, cap.mask.tolist()
    page.add_page(attention_prompts_view(
        torch.stack([p[shown] for p in cap.layer_patterns]).double().numpy(), [strs[b] for b in shown],
        mask=cap.mask[shown].numpy(), layer_labels=list(cap.layers),
        prompt_labels=[f"{b}: {''.join(s for s, k in zip(strs[b], keep[b]) if k)[:40]}" for b in shown],
        initial_prompt=shown.index(prompt),
        initial=0 if layer is None else cap.layers.index(layer)))
    return page


def _attention_rows_page(cap: Any, page: Page, prompt: int) -> Page:
    """Selected query rows: the head-mean attention of each slot over the prompt's tokens."""
    strs = cap.str_tokens[prompt]
    keep = cap.mask[prompt].numpy()
    for k, (pos, ok) in enumerate(zip(cap.positions[prompt].tolist(),
                                      cap.positions_mask[prompt].tolist())):
        if not ok:
            continue
        values = {f"layer {l}": cap.layer_patterns[i][prompt, :, k].double().mean(0).numpy()
                  for i, l in enumerate(cap.layers)}
        page.add_page(token_view(strs, values, mask=keep,
                                 label=f"prompt {prompt}: attention from {strs[pos]!r} (position {pos})"))
    return page


def logit_lens_page(cap: Any) -> Page:
    """The top token (and its probability) of every state x_0..x_L, for the first prompts."""
    page = Page("LogitLens")
    page.add_heading(f"Logit lens ({cap.meta.model_name}, {cap.meta.mode})")
    strs = cap.selected_str_tokens()
    n_states = cap.top_ids.shape[0]
    for b in range(min(4, cap.mask.shape[0])):
        top = [[row[0] for row in cap.top_strings(layer=i)[b]] for i in range(n_states)]
        probs = cap.top_logprobs[:, b, :, 0].exp().double().numpy()
        page.add_page(
            logit_lens_table(
                top, probs, row_labels=[f"x{i}" for i in range(n_states)],
                col_labels=strs[b], mask=cap.mask[b].numpy(), title=f"prompt {b}",
            )
        )
    return page


def head_steps_page(cap: Any) -> Page:
    """Layer x part heatmaps of the mean angle share, step projection and DLA over prompts."""
    page = Page("HeadSteps")
    mode = f", {cap.meta.mode}" if cap.meta is not None else ""
    page.add_heading(f"HeadSteps ({cap.meta.model_name if cap.meta else '?'}{mode})")
    page.add_text(f"positions {cap.settings.get('positions')}, baseline "
                  f"{cap.settings.get('baseline')}; means over prompts; rows are blocks")
    for f, label in (("angle", "angle share (deg)"), ("step_proj", "projection on the step"),
                     ("dla", "direct logit attribution")):
        vals = cap.mean(f).numpy()
        if not np.isfinite(vals).any():
            continue
        fig = P.plot_head_heatmap(vals, head_labels=cap.parts, colorbar_label=label,
                                  ylabel="block", title=f"{f}: mean at the selected positions")
        page.add_html(figure_to_html(fig, alt=f))
    return page


# -- cards and figures of analyzer results ----------------------------------------------------------

_MAX_ROWS = 12
_MAX_COLS = 8
# which statistics a small table shows first (means and adjusted p-values before spreads and counts)
_PRIORITY = {"mean": 0, "mean_diff": 0, "value": 0, "r": 0, "p_fdr_bh": 1, "d_z": 2, "hedges_g": 2,
             "median": 3, "ci_low": 4, "ci_high": 4, "sd": 5, "sem": 5, "n": 6}


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


def summary_card(obj: Any) -> str:
    """A compact notebook card: the class, a summary line, a small table, how to get the rest."""
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


def result_figure(obj: Any, **kwargs: Any) -> Any:
    """The natural figure for an analyzer result (see each class's ``plot``)."""
    name = type(obj).__name__
    title = kwargs.pop("title", None) or name
    if name == "LayerSummary":
        return P.plot_layer_profiles(
            {"mean": (obj.mean, obj.ci_low, obj.ci_high)}, ylabel="value", title=title, **kwargs
        )
    if name == "PairedTest":
        return P.plot_layer_profiles(
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
        return P.plot_layer_profiles(
            curves, significant=sig if sig is not None and sig.shape == (n,) else None,
            layers=None if layers is None else [str(x) for x in layers],
            ylabel=_YLABELS.get(name) or str(getattr(obj, "statistic", "") or "value"),
            title=title, **kwargs,
        )
    if kwargs:
        raise InputError(f"{name}.plot() takes only title=; got {sorted(kwargs)}")
    return _frame_lines(obj, title)


# -- the dispatch -----------------------------------------------------------------------------------

#: class name -> its default page (the first match up the MRO wins; tlprobes' own classes only).
_PAGES: dict[str, Callable[..., Any]] = {
    "Result": result_page,
    "AttentionCapture": attention_page,
    "LogitLensCapture": logit_lens_page,
    "HeadStepsCapture": head_steps_page,
    "Captured": captured_page,
}


def _page_view(cls: type) -> Callable[..., Any] | None:
    for c in cls.__mro__:
        fn = _PAGES.get(c.__name__)
        if fn is not None and c.__module__.startswith("tlprobes."):
            return fn
    return None


def _is_result(obj: Any) -> bool:
    """An analyzer result: a data class with a tidy ``to_frame`` and no page of its own."""
    return _page_view(type(obj)) is None and callable(getattr(obj, "to_frame", None))


def _card_page(obj: Any) -> Page:
    return Page(type(obj).__name__).add_html(summary_card(obj))


def _check_options(obj: Any, allowed: list[str], options: dict[str, Any]) -> None:
    bad = [k for k in options if k not in allowed]
    if bad:
        raise InputError(
            f"{type(obj).__name__}.view() got unknown option(s) {bad}; "
            f"valid: {choices(allowed) if allowed else 'none'}"
        )


def default_page(obj: Any, **options: Any) -> Any:
    """``obj``'s default view with its options (``Display._build_page``)."""
    fn = _page_view(type(obj))
    if fn is None:
        if _is_result(obj):
            _check_options(obj, [], options)
            return _card_page(obj)
        raise ArgumentError(
            f"{type(obj).__name__} has no default view; views exist for "
            f"{choices(_PAGES)} and analyzer results (anything with to_frame)"
        )
    _check_options(obj, list(inspect.signature(fn).parameters)[1:], options)
    return fn(obj, **options)


def page_of(obj: Any, **options: Any) -> Page | Report:
    """``obj``'s view: its ``_build_page(**options)`` (a ``Page`` or ``Report``; an HTML string is
    wrapped in a ``Page``)."""
    build = obj._build_page
    params = inspect.signature(build).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        _check_options(obj, list(params), options)  # a class's own _build_page: its own options
    built = build(**options)
    if isinstance(built, str):
        return Page(type(obj).__name__).add_html(built)
    return built


def notebook_html(obj: Any) -> str:
    """What Jupyter shows for ``obj``: an analyzer result's card, otherwise its page as a fragment
    (the circuitsvis bundle once per kernel, see :func:`~tlprobes.render.notebook_bundle`)."""
    if _is_result(obj):
        return summary_card(obj)
    return notebook_fragment(page_of(obj).to_html(full=False))


def figure_of(obj: Any, **kwargs: Any) -> Any:
    """``obj.plot(**kwargs)``: an analyzer result's natural figure."""
    if not _is_result(obj):
        raise ArgumentError(
            f"{type(obj).__name__} has no figure; .plot() draws analyzer results "
            "(anything with to_frame); show a capture with .view() or .show()"
        )
    return result_figure(obj, **kwargs)
