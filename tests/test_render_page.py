from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from render_helpers import PAYLOAD, mounted

from tlprobes._display import Display
from tlprobes._errors import InputError
from tlprobes.render import Page
from tlprobes.render._escape import escape_html, escape_script, script_json
from tlprobes.render._runtime import circuitsvis_bundle


def test_bundle_inlined_once_for_many_views() -> None:
    page = Page("t")
    for i in range(5):
        page.add_view("ColoredTokens", tokens=["a", "b"], values=np.array([i, 1.0]))
    html = page.to_html()
    assert page.n_views == 5
    assert html.count("var CircuitsVis=") == 1
    assert len(mounted(html)) == 5
    assert "unpkg" not in html and "jsdelivr" not in html
    assert "<script src" not in html.lower() and 'type="module"' not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_page_without_views_has_no_bundle() -> None:
    html = Page("t").add_text("hello").to_html()
    assert "var CircuitsVis=" not in html and "hello" in html


def test_bundle_closing_script_escaped_not_deleted() -> None:
    js = circuitsvis_bundle()
    assert "</script" not in js.lower()
    assert "<\\/script" in js  # React's innerHTML="<script></script>" kept, escaped


def test_script_tags_balanced_with_payload_tokens() -> None:
    page = Page(PAYLOAD).add_heading(PAYLOAD).add_text(PAYLOAD)
    page.add_view("ColoredTokens", tokens=[PAYLOAD, "</SCRIPT >"], values=np.array([0.0, 1.0]))
    html = page.to_html()
    # bundle, runtime, view; and no "<!--" that could switch the parser to double-escaped script data
    assert html.lower().count("</script") == 3 and "<!--" not in html
    assert "<img" not in html
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    ((_, props),) = mounted(html)
    # ColoredTokens draws tokens with innerHTML, so they are HTML-escaped before JSON-escaping
    assert props["tokens"] == [
        "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;",
        "&lt;/SCRIPT &gt;",
    ]
    heads = Page().add_view("AttentionHeads", tokens=[PAYLOAD], attention=np.ones((1, 1, 1)))
    ((_, props),) = mounted(heads.to_html())
    assert props["tokens"] == [PAYLOAD]  # drawn on a canvas: kept verbatim


def test_script_json_rounds_and_nulls() -> None:
    text = script_json(
        {
            "v": np.array([0.123456, np.nan, np.inf]),
            "t": torch.tensor([1.5e-7]),
            "i": np.arange(2),
            "s": "<&>",
        },
        decimals=3,
    )
    assert json.loads(text) == {"v": [0.123, None, None], "t": [0.0], "i": [0, 1], "s": "<&>"}
    assert "<" not in text and ">" not in text and "&" not in text and "NaN" not in text


def test_escape_helpers() -> None:
    assert escape_html('"<a>&') == "&quot;&lt;a&gt;&amp;"
    assert escape_script("x='</script>'; y='</Script'") == "x='<\\/script>'; y='<\\/Script'"
    assert math.isclose(json.loads(script_json(np.float32(0.1), decimals=4)), 0.1)


def test_unknown_component_names_choices() -> None:
    with pytest.raises(InputError, match="AttentionHeads"):
        Page().add_view("Heatmap", tokens=["a"])
    with pytest.raises(ValueError, match="heading level 7"):
        Page().add_heading("x", level=7)


def test_fragment_and_document() -> None:
    page = Page("t").add_view("ColoredTokens", tokens=["a"], values=[1.0])
    frag = page._repr_html_()
    assert not frag.startswith("<!DOCTYPE") and frag.count("var CircuitsVis=") == 1
    assert page.to_html().startswith("<!DOCTYPE html>")
    assert page.__html__() == frag


def test_merging_pages_keeps_one_bundle() -> None:
    a = Page("a").add_view("ColoredTokens", tokens=["a"], values=[1.0])
    b = Page("b").add_view("ColoredTokens", tokens=["b"], values=[2.0])
    html = Page("c").add_page(a).add_page(b).to_html()
    assert html.count("var CircuitsVis=") == 1 and len(mounted(html)) == 2


class _Result(Display):
    def _build_page(self) -> Page:
        return Page("r").add_text(PAYLOAD)


class _StrResult(Display):
    def _build_page(self) -> str:
        return "<b>bold</b>"


def test_mixin_repr_save_show(tmp_path, monkeypatch) -> None:
    import urllib.request

    import circuitsvis.utils.render as cvr

    def no_network(*a, **k):
        raise AssertionError("network touched")

    monkeypatch.setattr(cvr, "internet_on", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    r = _Result()
    assert "&lt;/script&gt;" in r._repr_html_()
    out = r.save_html(tmp_path / "sub" / "r.html")  # save() is left to a class's data
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert r.view().save(tmp_path / "p.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "<b>bold</b>" in _StrResult().to_html()
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url))
    path = r.show()
    assert path is not None and path.exists() and opened == [path.resolve().as_uri()]
    path.unlink()
