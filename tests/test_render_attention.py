from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from render_helpers import PAYLOAD, mounted, widgets

from tlprobes._errors import HeadError, InputError, LayerError
from tlprobes.render import (
    attention_layers_view,
    attention_overview,
    attention_view,
    head_summaries,
)

TOKENS = ["<pad>", "<bos>", "The", PAYLOAD, " sat"]
MASK = np.array([False, True, True, True, True])  # left padding


def causal(n_layer: int, n_head: int, n_pos: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_layer, n_head, n_pos, n_pos))
    s = np.where(np.tril(np.ones((n_pos, n_pos), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_attention_view_strips_padding_and_subsets_heads() -> None:
    pat = causal(3, 4, 5)
    page = attention_view(pat, TOKENS, layer=2, heads=[3, 1], mask=MASK)
    html = page.to_html()
    ((comp, props),) = mounted(html)
    assert comp == "AttentionHeads"
    assert props["tokens"] == TOKENS[1:]
    assert props["attentionHeadNames"] == ["L2H3", "L2H1"]
    got = np.array(props["attention"])
    assert got.shape == (2, 4, 4)
    np.testing.assert_allclose(got, pat[2][[3, 1]][:, 1:, 1:], atol=5e-5)
    assert html.count("var CircuitsVis=") == 1 and "<img" not in html


def test_attention_view_accepts_torch_3d_and_valid_length() -> None:
    pat = torch.tensor(causal(1, 2, 5)[0], dtype=torch.float32)
    ((_, props),) = mounted(attention_view(pat, TOKENS, layer=7, mask=3).to_html())
    assert props["tokens"] == TOKENS[:3] and props["attentionHeadNames"] == ["L7H0", "L7H1"]
    assert np.array(props["attention"]).shape == (2, 3, 3)


def test_attention_view_pattern_style_one_view_per_head() -> None:
    html = attention_view(
        causal(2, 4, 5), TOKENS, layer=0, heads=[0, 1, 2], style="pattern"
    ).to_html()
    views = mounted(html)
    assert [c for c, _ in views] == ["AttentionPattern"] * 3
    assert html.count("var CircuitsVis=") == 1


def test_attention_view_errors_name_choices() -> None:
    pat = causal(3, 4, 5)
    with pytest.raises(LayerError, match=r"layer None .* 0, 1, 2"):
        attention_view(pat, TOKENS)
    with pytest.raises(HeadError, match=r"\[4\].*0, 1, 2, 3"):
        attention_view(pat, TOKENS, layer=0, heads=[4])
    with pytest.raises(InputError, match="4 str_tokens"):
        attention_view(pat, TOKENS[:4], layer=0)
    with pytest.raises(InputError, match="max_cells"):
        attention_view(pat, TOKENS, layer=0, max_cells=10)
    # under the jaxtyping+beartype test hook the Literal annotation rejects it first (TypeError)
    with pytest.raises((InputError, TypeError), match="style"):
        attention_view(pat, TOKENS, layer=0, style="grid")  # type: ignore[arg-type]


def test_layers_view_stores_uint8_and_decodes() -> None:
    pat = causal(4, 3, 5)
    page = attention_layers_view(
        pat, TOKENS, mask=MASK, heads=[0, 2], layers=[1, 3], layer_labels=["a", "b", "c", "d"]
    )
    html = page.to_html()
    ((kind, data),) = widgets(html)
    assert kind == "layers" and page.n_views == 1 and html.count("var CircuitsVis=") == 1
    assert data["headNames"] == [["LbH0", "LbH2"], ["LdH0", "LdH2"]]
    assert data["tokens"] == TOKENS[1:]
    raw = np.frombuffer(base64.b64decode(data["data"][1]), np.uint8).reshape(2, 4, 4)
    decoded = data["lo"] + raw * (data["hi"] - data["lo"]) / 255
    np.testing.assert_allclose(
        decoded, pat[3][[0, 2]][:, 1:, 1:], atol=(data["hi"] - data["lo"]) / 500
    )
    assert '<option value="1">d</option>' in html
    with pytest.raises(LayerError):
        attention_layers_view(pat, TOKENS, layers=[9])


def test_head_summaries_uniform_causal_closed_form() -> None:
    T = 4
    pat = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    s = head_summaries(pat[None, None])
    assert s["entropy"].shape == (1, 1)
    np.testing.assert_allclose(s["entropy"], np.mean(np.log(np.arange(1, T + 1))))
    np.testing.assert_allclose(s["sink"], np.mean(1 / np.arange(1, T + 1)))
    np.testing.assert_allclose(s["self"], np.mean(1 / np.arange(1, T + 1)))
    np.testing.assert_allclose(s["prev_token"], np.mean(1 / np.arange(2, T + 1)))


def test_head_summaries_mask_matches_stripped_and_pools_batch() -> None:
    pat = causal(2, 3, 5)
    stripped = head_summaries(pat[..., 1:, 1:])
    masked = head_summaries(pat, MASK)
    for k in stripped:
        # masked keys are left out of entropy; others read only real cells
        np.testing.assert_allclose(masked[k], stripped[k], atol=1e-12) if k != "entropy" else None
    # batch mask [batch, pos] pools every real query once
    batch = np.stack([pat, pat])
    pooled = head_summaries(batch, np.stack([MASK, np.ones(5, bool)]))
    for k in pooled:
        assert pooled[k].shape == (2, 3)
    with pytest.raises(InputError, match="batch shape"):
        head_summaries(batch, np.ones((3, 5), bool))


def test_overview_data_and_errors() -> None:
    s = head_summaries(causal(3, 4, 5))
    s["entropy"][0, 0] = np.nan
    page = attention_overview(s, layer_labels=["x", "y", "z"], initial="sink")
    html = page.to_html()
    ((kind, data),) = widgets(html)
    assert kind == "overview" and page.n_views == 0 and "var CircuitsVis=" not in html
    assert data["names"] == ["entropy", "sink", "prev_token", "self"] and data["initial"] == "sink"
    assert data["metrics"]["entropy"]["values"][0][0] is None
    assert len(data["cmap"]) == 256 and data["layers"] == ["x", "y", "z"]
    with pytest.raises(InputError, match="choose one of 'entropy'"):
        attention_overview(s, initial="nope")
    with pytest.raises(InputError, match="shape"):
        attention_overview({"a": np.zeros((2, 3)), "b": np.zeros((3, 2))})
