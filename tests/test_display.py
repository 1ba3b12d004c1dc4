"""Every capture and result displays itself offline: one bundle, no network, prompts escaped."""

from __future__ import annotations

from conftest import PROMPTS

import tlprobes as tp

PAYLOAD = "</script><img src=x onerror=alert(1)>"


def test_results_render_offline_and_escaped(model, tmp_path):
    if tp.adapter_for(model).meta.model_kind != "TransformerBridge" or tp.adapter_for(model).meta.mode != "raw":
        return  # rendering does not depend on the model kind; one kind is enough
    res = tp.run(model, [PROMPTS[0], "Mary said " + PAYLOAD + " to her."],
                 tp.Residual(), tp.Attention(layers=[0, 2]), tp.LogitLens(top_k=3), tp.Steps())
    for name in res:
        html = res[name].to_html()
        assert "unpkg" not in html and "<script src" not in html
        assert PAYLOAD not in html, name  # the raw payload never appears unescaped
        assert "<img src=x" not in html
    from tlprobes.render import circuitsvis_bundle

    probe = circuitsvis_bundle()[1000:1200]  # a stretch of the inlined JS
    full = res.to_html()
    assert full.count(probe) == 1  # inlined once for the whole report
    text = res.save_html(tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count(probe) == 1
    assert "Attention" in text and "Logit lens" in text
    assert res.attention._repr_html_().startswith("<")
