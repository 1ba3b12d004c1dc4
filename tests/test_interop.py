"""A TransformerLens ActivationCache gives the same captures and analyses as tlprobes' own probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROMPTS

import tlprobes as tp
from tlprobes.errors import InputError


def _cache_and_run(model):
    res = tp.run(model, PROMPTS, tp.Residual(), tp.Components(), tp.Attention())
    tokens = res.inputs.tokens  # right-padded; causal attention keeps real positions exact
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return res, cache, tokens


def test_from_cache_matches_tlprobes_capture(model):
    res, cache, tokens = _cache_and_run(model)
    got = tp.from_cache(cache, tokens)
    mask = res.inputs.attention_mask
    # the mask comes from TL's own get_attention_mask on the padded tokens
    assert torch.equal(got.inputs.attention_mask, mask)
    assert not mask.all()  # the batch really is padded, so this checks something
    m = mask[None, :, :, None]
    torch.testing.assert_close(got.residual.resid * m, res.residual.resid.to(got.residual.resid) * m,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.components.attn_out * m,
                               res.components.attn_out.to(got.components.attn_out) * m,
                               atol=1e-5, rtol=1e-4)
    keep = mask[:, None, :, None] & mask[:, None, None, :]
    torch.testing.assert_close(got.attention.pattern * keep,
                               res.attention.pattern.to(got.attention.pattern) * keep,
                               atol=1e-5, rtol=1e-4)
    assert got.residual.str_tokens == res.residual.str_tokens


def test_analyzers_take_the_cache(model):
    res, cache, tokens = _cache_and_run(model)
    mask = res.inputs.attention_mask
    ours = tp.angle_trajectory(res.residual, " her", control="clean")
    theirs = tp.angle_trajectory(tp.from_cache(cache, tokens).residual, " her", control="clean")
    for g in ours.summary:
        np.testing.assert_allclose(theirs.summary[g].mean, ours.summary[g].mean, atol=1e-3)
    a = tp.path_length(cache, mask=mask)  # a bare cache: the mask is given
    b = tp.path_length(res.residual)
    np.testing.assert_allclose(a.total, b.total, rtol=1e-4, atol=1e-5)
    d = tp.analysis.decompose_steps(cache, mask=mask)
    np.testing.assert_allclose(d.step, tp.analysis.decompose_steps(res.components).step, rtol=1e-4, atol=1e-5)


def test_mask_given_wins_and_bad_inputs(model):
    res, cache, tokens = _cache_and_run(model)
    ones = torch.ones_like(tokens, dtype=torch.bool)
    assert tp.from_cache(cache, tokens, mask=ones).inputs.attention_mask.all()
    with pytest.raises(InputError, match="mask must be"):
        tp.from_cache(cache, tokens, mask=torch.ones(2, 3))
    with pytest.raises(InputError, match="tokens have shape"):
        tp.from_cache(cache, tokens[:, :2])
    with pytest.raises(InputError, match="ActivationCache"):
        tp.from_cache({"blocks.0.hook_resid_pre": torch.zeros(1, 2, 3)})
    with torch.no_grad():
        _, partial = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(InputError, match="lacks it"):
        tp.path_length(partial)
