"""Escaping without a browser: every string prop of every circuitsvis component that draws with
innerHTML is HTML-escaped in the page's JSON; the CSP allows exactly the scripts tlprobes wrote; and
text given to matplotlib is never parsed as mathtext (``$$`` in a token crashed the geometry report).
The browser-side proof is ``test_render_injection_browser.py``."""

from __future__ import annotations

import base64
import hashlib
import re

import numpy as np
import pytest
from matplotlib.text import Text
from render_helpers import mounted

from tlprobes.render import (
    Page,
    Report,
    plot_cosine_heatmap,
    plot_layer_profiles,
    plot_path_decomposition,
    plot_procrustes,
    plot_scatter,
    plot_scree,
    plot_trajectories,
)
from tlprobes.render._page import COMPONENTS
from tlprobes.render._plots import figure_to_html

EVIL = "<img src=x onerror=alert(1)>"
MATH = ["$$", "$\\frac$", "a$b", "$x^{$", "\\$"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_string_prop_is_escaped(component):
    props = {"tokens": [EVIL, "ok"], "labels": [EVIL], "firstDimensionName": EVIL,
             "nested": {"deep": [[EVIL]]}, "values": np.array([0.5, 1.0]),
             "names": np.array([EVIL, "b"])}
    ((name, got),) = mounted(Page().add_view(component, **props).to_html())
    strings = list(_strings(got))
    assert len(strings) == 7
    if component in ("AttentionHeads", "AttentionPattern"):  # canvas / React text: verbatim
        assert EVIL in strings
    else:
        assert EVIL not in strings and "&lt;img src=x onerror=alert(1)&gt;" in strings
        assert all("<" not in s for s in strings)


def test_csp_lists_exactly_our_scripts():
    page = Page("t").add_html("<script>alert(1)</script>")
    page.add_view("ColoredTokens", tokens=["a"], values=np.ones(1))
    html = page.to_html()
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', html).group(1)
    script_src = re.search(r"script-src ([^;]+);", csp).group(1).split()
    bodies = re.findall(r"<script>(.*?)</script>", html, re.S)

    def sha(body):
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    allowed = {b for b in bodies if sha(b) in script_src}
    assert "alert(1)" not in allowed and len(allowed) == len(bodies) - 1 == len(script_src)
    assert "unsafe-inline" not in " ".join(script_src) and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp


def _figures():
    m = np.linspace(60, 10, 5)
    pts = np.random.default_rng(0).random((5, 2))
    yield plot_layer_profiles({"$$": (m, m - 1, m + 1)}, layers=MATH, xlabel="$$",
                                  ylabel="$\\frac$", title="a$b", sig_label="$$")
    yield plot_path_decomposition(m, m, layers=MATH, xlabel="$$", ylabel="$", title="$$")
    yield plot_cosine_heatmap(np.eye(5), row_labels=MATH, col_labels=MATH, xlabel="$$",
                              ylabel="$$", colorbar_label="$$", title="$$")
    yield plot_scree({"$$": np.array([0.5, 0.3, 0.2])}, title="$$")
    yield plot_scatter(pts, groups=MATH, labels=MATH, method="$$", title="$$")
    yield plot_trajectories(np.random.default_rng(1).random((2, 5, 2)), group_labels=["$$", "$x"],
                            layer_labels=MATH, annotate="all", xlabel="$$", ylabel="$$", title="$$")
    yield plot_procrustes(pts, pts, pts, labels=MATH, names=("$$", "$\\frac$"), title="$$")


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_plot_text_is_never_mathtext(fmt):
    for fig in _figures():
        figure_to_html(fig, fmt)  # used to raise matplotlib's mathtext ParseException
        texts = [t for t in fig.findobj(Text) if t.get_text()]
        assert texts and not any(t.get_parse_math() for t in texts)
        assert any("$$" == t.get_text() for t in texts)  # drawn literally


def test_report_puts_results_first_and_the_manifest_last():
    html = Report("r", {"model": "m"}).add_heading("Results").add_text("x").to_html()
    assert html.index("Results") < html.index("Run manifest") < html.index("<th>model</th>")
