"""Matplotlib figures (Agg, no pyplot state) for the studies, plus inline embedding in HTML.

Every function takes plain arrays and labels and returns a ``matplotlib.figure.Figure``; save it
with ``fig.savefig("x.png")`` / ``"x.svg"`` or put it in a report with ``Report.add_figure``::

    >>> import numpy as np
    >>> m = np.linspace(80, 10, 13)
    >>> fig = plot_layer_profiles(
    ...     {"target": (m, m - 3, m + 3), "control": (m + 20, m + 15, m + 25)},
    ...     significant=np.arange(13) > 6)
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['target', 'control', 'significant (adjusted p < .05)']
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool, Float
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .._errors import InputError, choices
from ._arrays import Array, as_numpy
from ._escape import escape_html

__all__ = [
    "GROUP_COLORS",
    "InlineFigure",
    "plot_layer_profiles",
    "plot_path_decomposition",
    "plot_cosine_heatmap",
    "plot_scree",
    "plot_scatter",
    "plot_trajectories",
    "plot_procrustes",
    "figure_to_html",
    "plot_head_heatmap",
]

#: Fixed colours for the study groups, so every figure of a report agrees: one key per group, and
#: :func:`group_color` finds it however a name spells it (``non_target``, ``Non-target``).
GROUP_COLORS = {
    "target": "#d62728",
    "non-target": "#1f77b4",
    "control": "#7f7f7f",
    "attention": "#ff7f0e",
    "mlp": "#2ca02c",
}


def _color_key(name: object) -> str:
    """Lower case without ``-``, ``_`` or spaces: ``"Non_target"`` and ``"non-target"`` meet."""
    return re.sub(r"[-_\s]", "", str(name).lower())


_BY_KEY = {_color_key(k): v for k, v in GROUP_COLORS.items()}


def group_color(name: object) -> str | None:
    """The fixed colour of a study group, or ``None`` for a group without one.

    >>> group_color("non_target") == group_color("Non-target") == GROUP_COLORS["non-target"]
    True
    """
    return _BY_KEY.get(_color_key(name))
_CYCLE = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#1f77b4", "#ff7f0e", "#2ca02c"]


def _colors(names: Sequence[str]) -> list[str]:
    out, spare = [], iter(_CYCLE * (len(names) // len(_CYCLE) + 1))
    for n in names:
        out.append(group_color(n) or next(spare))
    return out


def _x(layers: Sequence[object] | None, n: int) -> tuple[np.ndarray, list[str] | None]:
    if layers is None:
        return np.arange(n), None
    labels = [str(v) for v in layers]
    if len(labels) != n:
        raise InputError(f"got {len(labels)} layer labels for {n} layers; pass one per layer")
    try:
        return np.asarray([float(v) for v in labels]), None
    except ValueError:
        return np.arange(n), labels


def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Figure, list]:
    fig = InlineFigure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _finish(ax: Any, xlabel: str, ylabel: str, title: str | None) -> None:
    """Labels, title, a light grid and a frameless legend: how every line plot here ends."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")


def plot_layer_profiles(
    curves: Mapping[
        str, tuple[Float[Array, " layer"], Float[Array, " layer"], Float[Array, " layer"]]
    ],
    *,
    significant: Bool[Array, " layer"] | None = None,
    layers: Sequence[object] | None = None,
    xlabel: str = "layer",
    ylabel: str = "angle (degrees)",
    title: str | None = None,
    sig_label: str = "significant (adjusted p < .05)",
    figsize: tuple[float, float] = (7.0, 4.0),
) -> Figure:
    """Per-layer profiles: mean curves with 95% CI bands (one line + band per group) and
    significance stars, whatever the per-layer quantity (angle, drift, step length, the lens's
    log-prob, P@1 ...; name it with ``ylabel``).

    Args:
        curves: ``{group: (mean[L], ci_low[L], ci_high[L])}``, e.g. target / non-target / control.
        significant: ``bool[L]``; a star is drawn above the bands at each significant layer.
        layers: x labels (numbers are placed by value, strings as categories).
    """
    if not curves:
        raise InputError("curves is empty; pass {group: (mean, ci_low, ci_high)}")
    fig, (ax,) = _figure(figsize)
    names = [str(k) for k in curves]
    n = None
    top = -np.inf
    for name, color in zip(names, _colors(names)):
        mean, lo, hi = (as_numpy(a) for a in curves[name])
        n = n or mean.shape[0]
        if not mean.shape == lo.shape == hi.shape == (n,):
            raise InputError(f"group {name!r}: mean, ci_low, ci_high must all be [{n}]")
        x, ticks = _x(layers, n)
        ax.plot(x, mean, color=color, label=name, marker="o", markersize=3, linewidth=1.6)
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        top = max(top, float(np.nanmax(np.r_[hi, mean])))
    x, ticks = _x(layers, n)
    if significant is not None:
        sig = as_numpy(significant, dtype=bool)
        if sig.shape != (n,):
            raise InputError(f"significant has shape {sig.shape}; expected ({n},), one per layer")
        lo_y, hi_y = ax.get_ylim()
        y = top + 0.06 * (hi_y - lo_y)
        ax.plot(
            x[sig],
            np.full(int(sig.sum()), y),
            linestyle="none",
            marker="*",
            color="black",
            markersize=8,
            label=sig_label,
        )
    if ticks is not None:
        ax.set_xticks(x, ticks, rotation=45, ha="right")
    else:  # numeric layers: integer ticks only
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, xlabel, ylabel, title)
    return fig


def plot_path_decomposition(
    attn: Float[Array, " layer"],
    mlp: Float[Array, " layer"],
    *,
    attn_err: Float[Array, " layer"] | None = None,
    mlp_err: Float[Array, " layer"] | None = None,
    layers: Sequence[object] | None = None,
    stacked: bool = False,
    xlabel: str = "layer",
    ylabel: str = "path length",
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 4.0),
) -> Figure:
    """Path length per layer split into attention and MLP contributions (grouped or stacked bars).

    ``attn_err`` / ``mlp_err`` (e.g. CI half-widths) draw error bars.
    """
    a, m = as_numpy(attn), as_numpy(mlp)
    if a.shape != m.shape:
        raise InputError(f"attn {a.shape} and mlp {m.shape} must have the same shape")
    n = a.shape[0]
    ea = None if attn_err is None else as_numpy(attn_err)
    em = None if mlp_err is None else as_numpy(mlp_err)
    fig, (ax,) = _figure(figsize)
    x = np.arange(n)
    ca, cm = GROUP_COLORS["attention"], GROUP_COLORS["mlp"]
    if stacked:
        ax.bar(x, a, 0.8, yerr=ea, color=ca, label="attention", capsize=2)
        ax.bar(x, m, 0.8, bottom=a, yerr=em, color=cm, label="MLP", capsize=2)
    else:
        ax.bar(x - 0.2, a, 0.4, yerr=ea, color=ca, label="attention", capsize=2)
        ax.bar(x + 0.2, m, 0.4, yerr=em, color=cm, label="MLP", capsize=2)
    labels = [str(v) for v in layers] if layers is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise InputError(f"got {len(labels)} layer labels for {n} layers; pass one per layer")
    step = max(1, n // 24)
    ax.set_xticks(x[::step], labels[::step])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return fig


def plot_cosine_heatmap(
    matrix: Float[Array, "row col"],
    *,
    row_labels: Sequence[object] | None = None,
    col_labels: Sequence[object] | None = None,
    vmin: float = -1.0,
    vmax: float = 1.0,
    cmap: str = "RdBu_r",
    annotate: bool | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    colorbar_label: str = "cosine similarity",
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A heatmap of a similarity matrix (diverging colours, fixed -1..1 by default, colour bar).

    ``annotate`` writes the values in the cells (default: when the matrix is at most 12 x 12).
    """
    mat = as_numpy(matrix)
    r, c = mat.shape
    rl = [str(v) for v in row_labels] if row_labels is not None else None
    cl = [str(v) for v in col_labels] if col_labels is not None else None
    if rl is not None and len(rl) != r or cl is not None and len(cl) != c:
        raise InputError(f"labels must match the matrix shape {mat.shape}")
    fig, (ax,) = _figure(figsize or (min(3 + 0.35 * c, 12.0), min(2.5 + 0.35 * r, 10.0)))
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=colorbar_label)
    if rl is not None:
        ax.set_yticks(np.arange(r), rl)
    if cl is not None:
        ax.set_xticks(np.arange(c), cl, rotation=45, ha="right")
    if annotate if annotate is not None else max(r, c) <= 12:
        for i in range(r):
            for j in range(c):
                v = mat[i, j]
                color = "white" if abs(v) > 0.6 * max(abs(vmin), abs(vmax)) else "black"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def plot_scree(
    ratios: Float[Array, " comp"] | Mapping[str, Float[Array, " comp"]],
    *,
    n: int | None = None,
    cumulative: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 3.8),
) -> Figure:
    """Explained-variance ratio per component (bars), with the cumulative curve.

    ``ratios`` may be ``{group: ratio[k]}`` to compare (e.g. per layer or model): one line each,
    and a dashed cumulative line each. ``n`` keeps the first ``n`` components.
    """
    fig, (ax,) = _figure(figsize)
    groups = (
        {str(k): as_numpy(v) for k, v in ratios.items()} if isinstance(ratios, Mapping) else None
    )
    if groups is None:
        r = as_numpy(ratios)[:n]
        x = np.arange(1, r.shape[0] + 1)
        ax.bar(x, r, color="#4c72b0", label="explained variance ratio")
        if cumulative:
            ax.plot(x, np.cumsum(r), color="black", marker="o", markersize=3, label="cumulative")
    else:
        for (name, r), color in zip(groups.items(), _colors(list(groups))):
            r = r[:n]
            x = np.arange(1, r.shape[0] + 1)
            ax.plot(x, r, color=color, marker="o", markersize=3, label=name)
            if cumulative:
                ax.plot(x, np.cumsum(r), color=color, linestyle="--", label=f"{name} (cumulative)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.02)
    _finish(ax, "component", "explained variance ratio", title)
    return fig


def _axis_names(method: str, explained: Sequence[float] | None) -> tuple[str, str]:
    if method.lower() == "pca":
        if explained is not None:
            e = [float(v) for v in explained]
            return f"PC1 ({100 * e[0]:.1f}%)", f"PC2 ({100 * e[1]:.1f}%)"
        return "PC1", "PC2"
    return f"{method} 1", f"{method} 2"


def plot_scatter(
    points: Float[Array, "n 2"],
    *,
    groups: Sequence[object] | None = None,
    labels: Sequence[str] | None = None,
    method: str = "PCA",
    explained: Sequence[float] | None = None,
    title: str | None = None,
    alpha: float = 0.75,
    figsize: tuple[float, float] = (5.5, 4.5),
) -> Figure:
    """A 2-D scatter (PCA or t-SNE), one colour and legend entry per group.

    Args:
        points: ``[n, 2]`` projected points.
        groups: one group name per point (e.g. noun / adjective); one series each.
        labels: optional text beside each point (escaped by matplotlib; keep it short).
        method: ``"PCA"`` (axes ``PC1 (x%)`` with ``explained``) or e.g. ``"t-SNE"``.
    """
    pts = as_numpy(points)
    k = pts.shape[0]
    g = ["all"] * k if groups is None else [str(v) for v in groups]
    if len(g) != k or labels is not None and len(labels) != k:
        raise InputError(f"groups and labels need one entry per point ({k})")
    fig, (ax,) = _figure(figsize)
    names = list(dict.fromkeys(g))
    garr = np.asarray(g)
    for name, color in zip(names, _colors(names)):
        sel = garr == name
        ax.scatter(pts[sel, 0], pts[sel, 1], s=18, alpha=alpha, color=color, label=name)
    if labels is not None:
        for (px, py), text in zip(pts, labels):
            ax.annotate(str(text), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    xl, yl = _axis_names(method, explained)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    if groups is not None:
        ax.legend(frameon=False, fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_trajectories(
    trajectories: Float[Array, "group layer 2"],
    *,
    group_labels: Sequence[object] | None = None,
    layer_labels: Sequence[object] | None = None,
    annotate: Literal["ends", "all", "none"] = "ends",
    xlabel: str = "PC1",
    ylabel: str = "PC2",
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 5.0),
) -> Figure:
    """State-space trajectories: one path through the layers per group (circle = first layer,
    square = last), with layer names written at the ends (or at every layer)."""
    if annotate not in ("ends", "all", "none"):
        raise InputError(f"annotate={annotate!r}; choose one of {choices(['ends', 'all', 'none'])}")
    tr = as_numpy(trajectories)
    n_group, n_layer = tr.shape[:2]
    gl = (
        [str(v) for v in group_labels]
        if group_labels is not None
        else [str(i) for i in range(n_group)]
    )
    ll = (
        [str(v) for v in layer_labels]
        if layer_labels is not None
        else [str(i) for i in range(n_layer)]
    )
    if len(gl) != n_group or len(ll) != n_layer:
        raise InputError(f"need {n_group} group labels and {n_layer} layer labels")
    fig, (ax,) = _figure(figsize)
    for g, (name, color) in enumerate(zip(gl, _colors(gl))):
        xy = tr[g]
        ax.plot(xy[:, 0], xy[:, 1], color=color, marker=".", linewidth=1.4, label=name)
        ax.scatter(xy[:1, 0], xy[:1, 1], color=color, marker="o", s=40, zorder=3)
        ax.scatter(xy[-1:, 0], xy[-1:, 1], color=color, marker="s", s=40, zorder=3)
        idx = (
            range(n_layer) if annotate == "all" else (0, n_layer - 1) if annotate == "ends" else ()
        )
        for i in idx:
            ax.annotate(
                ll[i], xy[i], fontsize=7, xytext=(3, 3), textcoords="offset points", color=color
            )
    _finish(ax, xlabel, ylabel, title)
    return fig


def plot_procrustes(
    source: Float[Array, "n 2"],
    target: Float[Array, "n 2"],
    aligned: Float[Array, "n 2"],
    *,
    labels: Sequence[str] | None = None,
    disparity_before: float | None = None,
    disparity_after: float | None = None,
    names: tuple[str, str] = ("source", "target"),
    title: str | None = None,
    figsize: tuple[float, float] = (10.0, 4.5),
) -> Figure:
    """Procrustes before / after: two panels, source (or aligned source) vs target, with a grey
    line joining each corresponding pair. Disparities, if given, go in the panel titles."""
    s, t, a = as_numpy(source), as_numpy(target), as_numpy(aligned)
    k = s.shape[0]
    if labels is not None and len(labels) != k:
        raise InputError(f"got {len(labels)} labels for {k} points; pass one per point")
    fig, axes = _figure(figsize, ncols=2)
    allpts = np.concatenate([s, t, a])
    pad = 0.05 * (allpts.max(0) - allpts.min(0) + 1e-12)
    lims = allpts.min(0) - pad, allpts.max(0) + pad
    for ax, moved, name, disp in (
        (axes[0], s, "before", disparity_before),
        (axes[1], a, "after", disparity_after),
    ):
        ax.add_collection(
            LineCollection(
                np.stack([moved, t], axis=1),
                colors="#999999",
                linewidths=0.8,
                label="correspondence",
            )
        )
        ax.scatter(
            moved[:, 0],
            moved[:, 1],
            s=22,
            color="#1f77b4",
            label=names[0] if name == "before" else f"{names[0]} (aligned)",
        )
        ax.scatter(t[:, 0], t[:, 1], s=22, color="#d62728", marker="^", label=names[1])
        if labels is not None:
            for (px, py), text in zip(moved, labels):
                ax.annotate(
                    str(text), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xlim(lims[0][0], lims[1][0])
        ax.set_ylim(lims[0][1], lims[1][1])
        ax.set_title(name + (f" (disparity {disp:.3g})" if disp is not None else ""))
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def figure_to_html(
    fig: Figure,
    fmt: Literal["png", "svg"] = "png",
    *,
    dpi: int = 110,
    alt: str = "",
) -> str:
    """A figure as self-contained HTML: a base64 ``data:`` PNG ``<img>`` or inline ``<svg>``.

    Text in SVG is drawn as paths and matplotlib escapes it, so labels cannot inject markup.
    """
    buf = io.BytesIO()
    if fmt == "png":
        savefig_plain(fig, buf, format="png", dpi=dpi)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img alt="{escape_html(alt)}" src="data:image/png;base64,{data}">'
    if fmt == "svg":
        savefig_plain(fig, buf, format="svg")
        svg = buf.getvalue().decode("utf-8")
        return svg[svg.index("<svg") :]
    raise InputError(f"unknown figure format {fmt!r}; choose one of {choices(['png', 'svg'])}")


def savefig_plain(fig: Figure, fname: Any, **kwargs: Any) -> None:
    """``fig.savefig`` with every text drawn literally: never parsed as mathtext.

    Labels come from prompts and tokens: a token ``$$`` or ``$\\frac$`` must print as itself, not
    crash matplotlib's mathtext parser. Texts already made are switched off one by one; texts made
    while drawing (tick labels) inherit ``text.parse_math = False`` from the context.
    """
    with _literal_text(fig):
        Figure.savefig(fig, fname, **kwargs)


@contextlib.contextmanager
def _literal_text(fig: Figure) -> Iterator[None]:
    """Switch mathtext off for every text of ``fig`` and for texts made while drawing."""
    import matplotlib
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    with matplotlib.rc_context({"text.parse_math": False}):
        yield


class InlineFigure(Figure):
    """A matplotlib ``Figure`` that shows itself in Jupyter as a PNG, with no ``%matplotlib``.

    The ``plot_*`` functions return it; it is a plain ``Figure`` otherwise (``savefig``, axes...).

        >>> fig = InlineFigure(figsize=(2, 1)); _ = fig.subplots().plot([0, 1])
        >>> fig._repr_png_()[:4]
        b'\\x89PNG'
    """

    def savefig(self, fname: Any, **kwargs: Any) -> None:
        """``Figure.savefig`` with every text drawn literally (see :func:`savefig_plain`)."""
        savefig_plain(self, fname, **kwargs)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    def __repr__(self) -> str:
        w, h = self.get_size_inches()
        return f"<Figure {w:g}x{h:g} in, {len(self.axes)} axes>"


def plot_head_heatmap(
    values: Float[Array, "layer head"],
    *,
    marks: Bool[Array, "layer head"] | None = None,
    head_labels: Sequence[object] | None = None,
    colorbar_label: str = "mean over prompts",
    title: str | None = None,
    annotate: bool | None = None,
    mark_label: str = "significant (adjusted p < .05)",
    ylabel: str = "layer",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A layer x head heatmap (layers down, heads across), diverging colours centred on 0.

    ``marks`` outlines chosen cells (e.g. heads whose contrast is significant); ``annotate``
    writes the values (default: at most 16 heads and 24 layers). NaN cells stay blank.

        >>> import numpy as np
        >>> vals, marks = np.arange(8.0).reshape(2, 4) - 3, np.eye(2, 4, dtype=bool)
        >>> fig = plot_head_heatmap(vals, marks=marks)
        >>> fig.axes[0].get_ylabel(), len(fig.axes[0].patches)
        ('layer', 2)
    """
    from matplotlib.patches import Rectangle

    mat = np.asarray(as_numpy(values), float)
    if mat.ndim != 2:
        raise InputError(f"values must be [layer, head], got shape {mat.shape}")
    L, H = mat.shape
    if head_labels is None:
        head_labels = [f"H{h}" for h in range(H)]
    labels = [str(v) for v in head_labels]
    if len(labels) != H:
        raise InputError(f"got {len(labels)} head labels for {H} heads; pass one per column")
    lim = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
    lim = lim if lim > 0 else 1.0
    fig, (ax,) = _figure(figsize or (min(3.2 + 0.5 * H, 14.0), min(2.2 + 0.38 * L, 12.0)))
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label=colorbar_label)
    ax.set_xticks(np.arange(H), labels, rotation=45 if H > 8 else 0)
    ax.set_yticks(np.arange(L), [str(l) for l in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel(ylabel)
    if annotate if annotate is not None else (H <= 16 and L <= 24):
        for i in range(L):
            for j in range(H):
                v = mat[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 * lim else "black")
    if marks is not None:
        mk = np.asarray(as_numpy(marks), bool)
        if mk.shape != mat.shape:
            raise InputError(f"marks have shape {mk.shape} but values have shape {mat.shape}")
        for n, (i, j) in enumerate(zip(*np.nonzero(mk))):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=2,
                                   label=mark_label if n == 0 else None))
        if mk.any():
            ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.12))
    if title:
        ax.set_title(title)
    return fig
