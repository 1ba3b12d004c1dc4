"""Runs that need no pattern use SDPA on the bridge, report it, and equal the eager run.

Oracle: the same probes run together with ``tp.Attention()`` (which keeps every block on the
bridge's own eager path) and the model's own logits from a plain forward pass.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

import tlprobes as tp
from tlprobes._tl.attn_impl import use_fastest

ATOL = 2e-5


def _fast_kind(model_kind: str) -> bool:
    return model_kind == "bridge"  # raw-mode GPT-2 bridge: JointQKVAttentionBridge blocks


@pytest.mark.parametrize("side", ["right", "left"])
def test_no_pattern_runs_sdpa_and_equals_eager(model, model_kind, side):
    kw = dict(batch_size=3, padding_side=side)
    fast = tp.run(model, PROMPTS, tp.Residual(mid=True), tp.Components(), tp.LogitLens(top_k=3), **kw)
    slow = tp.run(model, PROMPTS, tp.Residual(mid=True), tp.Components(), tp.LogitLens(top_k=3),
                  tp.Attention(layers=[0]), **kw)
    assert slow.settings["attention"] == "eager"
    assert fast.settings["attention"] == ("sdpa" if _fast_kind(model_kind) else "eager")
    keep = fast.inputs.attention_mask
    for a, b in [(fast.residual.resid, slow.residual.resid), (fast.residual.resid_mid, slow.residual.resid_mid),
                 (fast.components.attn_out, slow.components.attn_out)]:
        torch.testing.assert_close(a[:, keep], b[:, keep], atol=ATOL, rtol=0)
    lf, ls = fast.logit_lens, slow.logit_lens
    torch.testing.assert_close(lf.target_logprob[:, keep].nan_to_num(), ls.target_logprob[:, keep].nan_to_num(),
                               atol=1e-4, rtol=0)


def test_sdpa_logits_equal_the_models_own(model, model_kind):
    if not _fast_kind(model_kind):
        pytest.skip("only the raw bridge has blocks to switch")
    tokens = model.to_tokens(PROMPTS[1])
    with torch.no_grad():
        want = model(tokens)  # eager: nothing attached
        sw = use_fastest(model, needs_pattern=False)
        try:
            got = model(tokens)
        finally:
            sw.restore()
    assert sw.name == "sdpa" and sw.calls["sdpa"] == model.cfg.n_layers
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    for l in range(model.cfg.n_layers):  # restored: the class method again
        assert "_reconstruct_attention" not in model.blocks[l].attn.__dict__


def test_a_hook_on_the_pattern_keeps_its_block_eager(fresh_model, model_kind):
    """The user's own pattern hook still fires (and still edits the pattern) during a Residual-only run."""
    if not _fast_kind(model_kind):
        pytest.skip("only the raw bridge has blocks to switch")
    fired = []

    def ablate(t, hook):
        fired.append(hook.name)
        return torch.zeros_like(t)
    fresh_model.add_hook("blocks.1.attn.hook_pattern", ablate)
    res = tp.run(fresh_model, PROMPTS, tp.Residual(), batch_size=4)
    assert fired == ["blocks.1.attn.hook_pattern"]
    assert res.settings["attention"].startswith("sdpa+eager")
    with torch.no_grad():  # the oracle: TL's own cache with the same hook, all eager
        _, cache = fresh_model.run_with_cache(res.inputs.tokens, attention_mask=res.inputs.attention_mask.long())
    keep = res.inputs.attention_mask
    torch.testing.assert_close(res.residual.resid[-1][keep],
                               cache[f"blocks.{fresh_model.cfg.n_layers - 1}.hook_resid_post"][keep],
                               atol=ATOL, rtol=0)


def test_attach_restores_the_model_even_when_the_pass_fails(model, model_kind):
    with pytest.raises(RuntimeError, match="boom"):
        with tp.attach(model, tp.Residual()):
            raise RuntimeError("boom")
    for l in range(model.cfg.n_layers):
        assert "_reconstruct_attention" not in model.blocks[l].attn.__dict__
