from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from tlprobes._errors import InputError
from tlprobes.render import (
    plot_cosine_heatmap,
    plot_layer_profiles,
    plot_path_decomposition,
    plot_procrustes,
    plot_scatter,
    plot_scree,
    plot_trajectories,
)
from tlprobes.render._plots import GROUP_COLORS, figure_to_html

L = 13


def curves() -> dict:
    m = np.linspace(90, 10, L)
    return {
        "target": (m + 5, m + 2, m + 8),
        "non-target": (m, m - 2, m + 2),
        "control": (m + 30, m + 25, m + 35),
    }


def test_layer_profiles_lines_bands_and_stars() -> None:
    sig = np.arange(L) >= 9
    fig = plot_layer_profiles(curves(), significant=sig, title="rot")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == [
        "target",
        "non-target",
        "control",
        "significant (adjusted p < .05)",
    ]
    assert lines[0].get_color() == GROUP_COLORS["target"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3
    stars = lines[3]
    np.testing.assert_array_equal(stars.get_xdata(), np.arange(9, L))
    assert stars.get_ydata().min() > 35 + 90  # above the highest band
    assert (
        ax.get_xlabel() == "layer"
        and ax.get_ylabel() == "angle (degrees)"
        and ax.get_title() == "rot"
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == [
        "target",
        "non-target",
        "control",
    ]


def test_one_colour_key_per_group_whatever_the_spelling() -> None:
    """``non-target`` is the one key; ``non_target``, ``nontarget`` and ``Non Target`` find it."""
    from tlprobes.render._plots import group_color

    assert sorted(GROUP_COLORS) == ["attention", "control", "mlp", "non-target", "target"]
    names = ["non-target", "non_target", "nontarget", "Non Target", "other"]
    m = np.linspace(1, 2, L)
    fig = plot_layer_profiles({n: (m, m - 1, m + 1) for n in names})
    colors = [ln.get_color() for ln in fig.axes[0].get_lines()]
    assert colors[:4] == [GROUP_COLORS["non-target"]] * 4 and colors[4] not in GROUP_COLORS.values()
    assert group_color("MLP") == GROUP_COLORS["mlp"] and group_color("targets") is None


def test_layer_profiles_string_layers_and_errors() -> None:
    c = {"target": curves()["target"]}
    fig = plot_layer_profiles(c, layers=[f"b{i}" for i in range(L)])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:2] == ["b0", "b1"]
    with pytest.raises((InputError, TypeError)):
        plot_layer_profiles(c, significant=np.ones(3, bool))


def test_path_decomposition_bars_and_errorbars() -> None:
    a, m = np.arange(1.0, 7.0), np.arange(6.0, 0.0, -1)
    fig = plot_path_decomposition(a, m, attn_err=0.1 * a, mlp_err=0.1 * m)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["attention", "MLP"]
    assert [len(b.patches) for b in bars] == [6, 6]
    assert [p.get_height() for p in bars[1].patches] == list(m)
    assert ax.get_ylabel() == "path length" and len(ax.get_xticks()) == 6
    stacked = plot_path_decomposition(a, m, stacked=True).axes[0]
    assert stacked.containers[1].patches[0].get_y() == a[0]


def test_cosine_heatmap_image_colorbar_labels() -> None:
    mat = np.corrcoef(np.random.default_rng(0).normal(size=(4, 10)))
    fig = plot_cosine_heatmap(mat, row_labels=list("abcd"), col_labels=list("wxyz"))
    ax, cbar = fig.axes
    (im,) = ax.get_images()
    assert im.get_array().shape == (4, 4) and im.get_clim() == (-1.0, 1.0)
    assert cbar.get_ylabel() == "cosine similarity"
    assert [t.get_text() for t in ax.get_yticklabels()] == list("abcd")
    assert len(ax.texts) == 16 and ax.texts[0].get_text() == "1.00"
    assert len(plot_cosine_heatmap(np.zeros((20, 20))).axes[0].texts) == 0


def test_scree_single_and_groups() -> None:
    r = np.array([0.5, 0.3, 0.1, 0.05])
    ax = plot_scree(r).axes[0]
    assert len(ax.patches) == 4
    (cum,) = ax.get_lines()
    np.testing.assert_allclose(cum.get_ydata(), np.cumsum(r))
    ax2 = plot_scree({"L3": r, "L9": r[::-1]}, n=3).axes[0]
    assert [ln.get_label() for ln in ax2.get_lines()] == [
        "L3",
        "L3 (cumulative)",
        "L9",
        "L9 (cumulative)",
    ]
    assert len(ax2.get_lines()[0].get_xdata()) == 3


def test_scatter_groups_and_axis_names() -> None:
    pts = np.random.default_rng(1).normal(size=(10, 2))
    ax = plot_scatter(pts, groups=["n"] * 4 + ["a"] * 6, explained=[0.62, 0.1]).axes[0]
    cols = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [c.get_label() for c in cols] == ["n", "a"] and [len(c.get_offsets()) for c in cols] == [
        4,
        6,
    ]
    assert ax.get_xlabel() == "PC1 (62.0%)" and ax.get_ylabel() == "PC2 (10.0%)"
    ax = plot_scatter(pts, method="t-SNE", labels=[str(i) for i in range(10)]).axes[0]
    assert ax.get_xlabel() == "t-SNE 1" and len(ax.texts) == 10


def test_trajectories_one_line_per_group() -> None:
    tr = np.random.default_rng(2).normal(size=(3, 5, 2))
    ax = plot_trajectories(tr, group_labels=["him", "her", "round"], annotate="all").axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["him", "her", "round"]
    np.testing.assert_allclose(ax.get_lines()[1].get_xydata(), tr[1])
    assert len(ax.texts) == 15


def test_procrustes_two_panels() -> None:
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    fig = plot_procrustes(s, t, t + 0.01, disparity_before=0.9, disparity_after=0.01)
    before, after = fig.axes
    assert (
        before.get_title() == "before (disparity 0.9)"
        and after.get_title() == "after (disparity 0.01)"
    )
    for ax in (before, after):
        assert len([c for c in ax.collections if isinstance(c, LineCollection)]) == 1
        assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 2


def test_figure_to_html_png_svg_escapes() -> None:
    fig = Figure()
    fig.subplots().set_title("</script><img src=x onerror=alert(1)>")
    png = figure_to_html(fig, "png", alt='"><b>')
    assert png.startswith('<img alt="&quot;&gt;&lt;b&gt;" src="data:image/png;base64,iVBOR')
    svg = figure_to_html(fig, "svg")
    assert svg.startswith("<svg") and "<img" not in svg and "</script" not in svg
    with pytest.raises((InputError, TypeError)):
        figure_to_html(fig, "pdf")  # type: ignore[arg-type]
