"""Captures against independent oracles: HF hidden states/attentions, TL's run_with_cache, identities."""

from __future__ import annotations

import pytest
import torch
from conftest import HF_KINDS, PROMPTS

import tlprobes as tp

ATOL = 1e-5


def _hf_single(hf_model, ids: list[int]):
    with torch.no_grad():
        return hf_model(
            torch.tensor([ids]), output_hidden_states=True, output_attentions=True
        )


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_resid_and_patterns_match_hf(model, model_kind, hf_model, side):
    """Each prompt run alone through HF (no padding at all) is the oracle for the padded batch."""
    if model_kind not in HF_KINDS:
        pytest.skip("boot_native has no HF twin")
    compat = model_kind.endswith("compat")
    res = tp.run(
        model, PROMPTS, tp.Residual(final_state="ln_f"), tp.Attention(), batch_size=3,
        padding_side=side,
    )
    r, att = res.residual, res.attention
    assert res.meta.mode == ("compat" if compat else "raw")
    n_layers = r.n_layers
    for b in range(len(PROMPTS)):
        keep = res.inputs.attention_mask[b]
        ids = res.inputs.tokens[b][keep].tolist()
        out = _hf_single(hf_model, ids)
        assert r.mask[b].sum() == len(ids)
        for layer in range(n_layers):  # hidden_states[l] == resid_pre l
            ours = r.resid[layer, b][keep]
            want = out.hidden_states[layer][0]
            if compat:  # HT processing centres the residual stream
                want = _centre(want)
            torch.testing.assert_close(ours, want, atol=ATOL, rtol=0)
            rows = att.pattern[layer, b][:, keep][:, :, keep]
            torch.testing.assert_close(rows, out.attentions[layer][0], atol=ATOL, rtol=0)
            # padded keys get no attention from real queries
            if (~keep).any():
                assert att.pattern[layer, b][:, keep][:, :, ~keep].abs().max() == 0
        if not compat:  # HF's last hidden state has ln_f (with its weights) applied
            torch.testing.assert_close(
                r.resid[n_layers, b][keep], out.hidden_states[n_layers][0], atol=ATOL, rtol=0
            )


def test_matches_run_with_cache(model):
    """Same padded tokens and mask through TL's own cache."""
    res = tp.run(
        model, PROMPTS, tp.Residual(mid=True), tp.Components(), tp.Attention(layers=[1], heads=[2, 0]),
        batch_size=4, padding_side="left",
    )
    tokens = res.inputs.tokens
    mask = res.inputs.attention_mask.long()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, attention_mask=mask)
    r, c = res.residual, res.components
    n = r.n_layers
    for layer in range(n):
        torch.testing.assert_close(r.resid[layer], cache[f"blocks.{layer}.hook_resid_pre"], atol=0, rtol=0)
        torch.testing.assert_close(r.resid_mid[layer], cache[f"blocks.{layer}.hook_resid_mid"], atol=0, rtol=0)
        torch.testing.assert_close(c.attn_out[layer], cache[f"blocks.{layer}.hook_attn_out"], atol=0, rtol=0)
        torch.testing.assert_close(c.mlp_out[layer], cache[f"blocks.{layer}.hook_mlp_out"], atol=0, rtol=0)
    torch.testing.assert_close(r.resid[n], cache[f"blocks.{n - 1}.hook_resid_post"], atol=0, rtol=0)
    acc = cache.accumulated_resid()  # [L+1, batch, pos, d]
    torch.testing.assert_close(r.resid, acc, atol=0, rtol=0)
    want = cache["blocks.1.attn.hook_pattern"][:, [2, 0]]
    torch.testing.assert_close(res.attention.pattern_at(1), want, atol=0, rtol=0)
    assert res.attention.heads == (2, 0)


def test_step_decomposes_into_attn_and_mlp(model):
    res = tp.run(model, PROMPTS, tp.Residual(mid=True), tp.Components(), batch_size=2)
    r, c = res.residual, res.components
    torch.testing.assert_close(r.resid[:-1] + c.attn_out, r.resid_mid, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.resid_mid + c.mlp_out, r.resid[1:], atol=1e-6, rtol=0)


def test_logit_lens_final_state_is_the_model(model):
    res = tp.run(model, PROMPTS, tp.LogitLens(top_k=3, keep_logprobs=True), batch_size=4)
    lens = res.logit_lens
    tokens, mask = res.inputs.tokens, res.inputs.attention_mask
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask.long())
    want = torch.log_softmax(logits.float(), -1)
    m = lens.mask
    torch.testing.assert_close(lens.logprobs[-1][m], want[m], atol=1e-5, rtol=0)
    assert torch.equal(lens.top_ids[-1, :, :, 0][m], logits.argmax(-1)[m])
    assert lens.kl_to_final[-1][m].abs().max() < 1e-5
    # every layer: ranks and log-probs of the next token, against the kept log-probs
    tgt = lens.target_ids
    has = tgt >= 0
    assert has.sum() == m.sum() - m.shape[0]  # every valid slot but the last of each prompt
    lp = lens.logprobs.gather(-1, tgt.clamp(min=0)[None, ..., None].expand(lens.logprobs.shape[0], -1, -1, 1))[..., 0]
    torch.testing.assert_close(lens.target_logprob[:, has], lp[:, has])
    rank = (lens.logprobs > lp[..., None]).sum(-1)
    assert torch.equal(lens.target_rank[:, has], rank[:, has])
    assert torch.isnan(lens.target_logprob[:, ~has]).all()
    # entropy and KL from the kept distributions
    ent = -(lens.logprobs.exp() * lens.logprobs).sum(-1)
    torch.testing.assert_close(lens.entropy[:, m], ent[:, m], atol=1e-5, rtol=1e-5)
    kl = (lens.logprobs[-1].exp() * (lens.logprobs[-1] - lens.logprobs)).sum(-1)
    torch.testing.assert_close(lens.kl_to_final[:, m], kl[:, m], atol=1e-5, rtol=1e-5)


def test_adapter_ln_final_equals_the_module(model):
    """Our hook-free final LayerNorm equals calling the model's own ln_final, at every state."""
    res = tp.run(model, PROMPTS[:2], tp.Residual(), batch_size=2)
    adapter = tp._tl.adapter.adapter_for(model)
    with torch.no_grad():
        for state in res.residual.resid:
            torch.testing.assert_close(adapter.ln_final(state), model.ln_final(state), atol=1e-5, rtol=0)


def test_course_variant_without_ln(model):
    res = tp.run(model, PROMPTS[:1], tp.LogitLens(apply_ln=False, keep_logprobs=True, positions="last"))
    # the course's states are HF's hidden_states: raw x_0..x_(L-1), ln_f(x_L) at the last one
    r = tp.run(model, PROMPTS[:1], tp.Residual(positions="last", final_state="ln_f")).residual
    adapter = tp._tl.adapter.adapter_for(model)
    want = torch.log_softmax(adapter.unembed(r.resid).float(), -1)
    torch.testing.assert_close(res.logit_lens.logprobs, want, atol=1e-5, rtol=0)


def test_steps_reducer_equals_stored_vectors(model):
    """The streaming reducer's numbers equal those computed from full captures (float64)."""
    res = tp.run(model, PROMPTS, tp.Residual(), tp.Components(), tp.Steps(), batch_size=3)
    x = res.residual.resid.double()
    a, mlp = res.components.attn_out.double(), res.components.mlp_out.double()
    s, m = res.steps, res.steps.mask
    delta = x[1:] - x[:-1]
    step = delta.norm(dim=-1)
    torch.testing.assert_close(s.step[:, m], step[:, m], atol=1e-9, rtol=1e-6)
    torch.testing.assert_close(s.norm[:, m], x.norm(dim=-1)[:, m], atol=1e-9, rtol=1e-6)
    torch.testing.assert_close((s.attn_proj + s.mlp_proj)[:, m], s.step[:, m], atol=1e-5, rtol=1e-5)
    cos = (x[1:] * x[:-1]).sum(-1) / (x[1:].norm(dim=-1) * x[:-1].norm(dim=-1))
    ang = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    torch.testing.assert_close(s.angle[:, m], ang[:, m], atol=1e-4, rtol=0)
    unit = delta / step[..., None]
    torch.testing.assert_close(s.attn_proj[:, m], (a * unit).sum(-1)[:, m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.mlp_proj[:, m], (mlp * unit).sum(-1)[:, m], atol=1e-5, rtol=1e-5)
    cos_am = (a * mlp).sum(-1) / (a.norm(dim=-1) * mlp.norm(dim=-1))
    torch.testing.assert_close(s.attn_mlp_cos[:, m], cos_am[:, m], atol=1e-6, rtol=1e-6)


def test_streaming_merge_equals_one_batch(model):
    probes = (tp.Steps(positions="last"), tp.ResidualMean())
    one = tp.run(model, PROMPTS, *probes, batch_size=len(PROMPTS))
    many = tp.run(model, PROMPTS, *probes, batch_size=1, progress=False)
    torch.testing.assert_close(one.steps.angle, many.steps.angle, atol=1e-4, rtol=0)
    torch.testing.assert_close(one.residual_mean.mean, many.residual_mean.mean, atol=1e-5, rtol=1e-5)
    assert one.residual_mean.count == many.residual_mean.count == one.inputs.attention_mask.sum()
    full = tp.run(model, PROMPTS, tp.Residual(), batch_size=4).residual
    m = full.mask
    want = full.resid.double()[:, m].mean(1)
    torch.testing.assert_close(one.residual_mean.mean, want, atol=1e-5, rtol=1e-5)


def test_injected_steps_are_captured_exactly(fresh_model):
    """A user's hooks set attn_out := 3 e0 and mlp_out := 4 e1: the captured step is 5 exactly."""
    model = fresh_model
    d = model.cfg.d_model
    a = torch.zeros(d)
    a[0] = 3.0
    m = torch.zeros(d)
    m[1] = 4.0
    model.add_hook("blocks.1.hook_attn_out", lambda t, hook: a.expand_as(t).clone())
    model.add_hook("blocks.1.hook_mlp_out", lambda t, hook: m.expand_as(t).clone())
    res = tp.run(model, PROMPTS[:2], tp.Steps(), tp.Components(layers=[1]), batch_size=2)
    valid = res.steps.mask
    assert torch.allclose(res.steps.step[1][valid], torch.tensor(5.0, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(res.steps.attn_proj[1][valid], torch.tensor(1.8, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(res.steps.mlp_proj[1][valid], torch.tensor(3.2, dtype=torch.float64), atol=1e-5)
    assert torch.equal(res.components.attn_out[0][0, 0], a)
    model.reset_hooks(including_permanent=True)
