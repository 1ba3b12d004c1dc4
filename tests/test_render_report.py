from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from render_helpers import PAYLOAD, mounted, widgets

from tlprobes._errors import InputError
from tlprobes.render import (
    Report,
    attention_overview,
    attention_view,
    head_summaries,
    plot_scree,
    token_view,
)


def _pattern() -> np.ndarray:
    p = np.tril(np.ones((2, 3, 4, 4)))
    return p / p.sum(-1, keepdims=True)


def build() -> Report:
    toks = ["<bos>", "a", PAYLOAD, "c"]
    rep = Report(PAYLOAD, {"model": "toy", "tl_version": "4.3.0", "settings": {"k": PAYLOAD}})
    rep.add_heading("Figures").add_figure(plot_scree(np.array([0.5, 0.3])), caption=PAYLOAD)
    rep.add_figure(plot_scree(np.array([0.5, 0.3])), fmt="svg")
    rep.add_heading("Tables").add_table(pd.DataFrame({PAYLOAD: [0.123456], "n": [3]}), caption="t")
    rep.add_heading("Views").add_text(PAYLOAD)
    rep.add_view(token_view(toks, np.arange(4.0), label="angle"))
    rep.add_view(attention_view(_pattern(), toks, layer=1))
    rep.add_view(attention_overview(head_summaries(_pattern())))
    return rep


def test_report_one_bundle_all_views_manifest_escaped(tmp_path) -> None:
    path = build().save(tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    assert html.count("var CircuitsVis=") == 1
    assert [c for c, _ in mounted(html)] == ["ColoredTokens", "AttentionHeads"]
    assert [k for k, _ in widgets(html)] == ["overview"]
    assert "<img src=x" not in html and "<img alt" in html and "<svg" in html
    assert "<th>tl_version</th><td>4.3.0</td>" in html
    assert (
        "&quot;k&quot;: &quot;&lt;/script&gt;" in html
    )  # nested manifest value, JSON then escaped
    assert "0.1235" in html  # table float format
    assert 'href="#' in html and "Contents" in html
    assert 'src="http' not in html and 'href="http' not in html
    assert "unpkg" not in html and "<script src" not in html


def test_report_repr_and_errors() -> None:
    rep = Report("r", {"model": "toy"})
    assert "toy" in rep._repr_html_() and "var CircuitsVis=" not in rep._repr_html_()
    with pytest.raises((InputError, TypeError), match="view"):  # beartype may reject it first
        rep.add_view(3)  # type: ignore[arg-type]
    with pytest.raises((InputError, TypeError), match="figure_format"):
        Report("r", figure_format="jpg")  # type: ignore[arg-type]
