from __future__ import annotations

import numpy as np
import pytest
import torch
from render_helpers import PAYLOAD, mounted

from tlprobes._errors import InputError
from tlprobes.render import logit_lens_table, token_view

TOKENS = ["<bos>", " The", PAYLOAD, "<pad>"]


def test_token_view_props_masked_and_escaped() -> None:
    page = token_view(
        TOKENS,
        torch.tensor([1.0, 2.0, float("nan"), 0.0]),
        label=PAYLOAD,
        mask=3,
        min_value=0.0,
        max_value=3.0,
    )
    html = page.to_html()
    ((comp, props),) = mounted(html)
    assert comp == "ColoredTokens"
    assert props == {
        "tokens": ["&lt;bos&gt;", " The", "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"],
        "values": [1.0, 2.0, None],
        "minValue": 0.0,
        "maxValue": 3.0,
    }
    assert "<img" not in html and "&lt;/script&gt;&lt;img" in html


def test_token_view_multi_metrics() -> None:
    vals = {"angle": np.array([1.0, 2, 3, 4]), "rank": np.array([9.0, 8, 7, 6])}
    ((comp, props),) = mounted(token_view(TOKENS, vals, mask=np.array([1, 1, 1, 0])).to_html())
    assert comp == "ColoredTokensMulti" and props["labels"] == ["angle", "rank"]
    assert props["values"] == [[1.0, 9.0], [2.0, 8.0], [3.0, 7.0]]


def test_token_view_shape_errors() -> None:
    with pytest.raises((InputError, TypeError), match="shape|pos"):
        token_view(TOKENS, np.zeros(3))
    with pytest.raises(InputError, match="not one string"):
        token_view("abcd", np.zeros(4))
    with pytest.raises(InputError, match="valid length 9"):
        token_view(TOKENS, np.zeros(4), mask=9)


def test_logit_lens_table_cells_shading_and_escaping() -> None:
    top = [["a", " b", "c", "pad"], ["x", PAYLOAD, "z", "pad"]]
    probs = np.array([[0.1, 0.2, 0.3, 0.0], [0.9, 1.0, np.nan, 0.0]])
    html = logit_lens_table(
        top, probs, row_labels=["L0", "L1"], col_labels=TOKENS, mask=3
    ).to_html()
    assert html.count("<td") == 6  # 2 layers x 3 real positions
    assert "<img" not in html and "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "rgba(33,102,172,1.000)" in html and "background:#eeeeee" in html
    assert "<th>L1</th>" in html and ">pad<" not in html


def test_logit_lens_table_shape_errors() -> None:
    with pytest.raises(InputError, match="top_tokens"):
        logit_lens_table([["a"]], np.zeros((2, 1)))
    with pytest.raises(InputError, match="row_labels"):
        logit_lens_table([["a"]], np.zeros((1, 1)), row_labels=["a", "b"])
