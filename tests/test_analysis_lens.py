"""Logit lens and unembedding tools against torch oracles and closed forms (methods.md 2.8)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlprobes._errors import InputError
from tlprobes._tl.adapter import adapter_for
from tlprobes.analysis import effective_rank, lens_readout, unembedding_spectrum, weight_tying


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    L1, B, P, d, V = 4, 2, 5, 16, 23
    x = torch.randn(L1, B, P, d, generator=g, dtype=torch.float64) * 3
    W_U = torch.randn(d, V, generator=g, dtype=torch.float64)
    b_U = torch.randn(V, generator=g, dtype=torch.float64)
    ln = torch.nn.LayerNorm(d, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
        ln.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    tg = torch.randint(0, V, (B, P), generator=g)
    return x, W_U, b_U, ln, tg


def test_logit_lens_matches_torch_oracle(setup):
    x, W_U, b_U, ln, tg = setup
    res = lens_readout(x, W_U, b_U, ln=ln, targets=tg, top_k=3)
    with torch.no_grad():
        z = ln(x) @ W_U + b_U
    lp = F.log_softmax(z, -1)
    top = torch.topk(z, 3, dim=-1)
    np.testing.assert_array_equal(res.top_ids, top.indices.numpy())
    np.testing.assert_allclose(res.top_logprobs, lp.gather(-1, top.indices).numpy(), atol=1e-10)
    tlp = lp.gather(-1, tg[None, ..., None].expand(4, -1, -1, 1))[..., 0]
    np.testing.assert_allclose(res.target_logprob, tlp.numpy(), atol=1e-10)
    zt = z.gather(-1, tg[None, ..., None].expand(4, -1, -1, 1))
    np.testing.assert_array_equal(res.target_rank, (z > zt).sum(-1).numpy())
    ent = -(lp.exp() * lp).sum(-1)
    np.testing.assert_allclose(res.entropy, ent.numpy(), atol=1e-10)
    kl = F.kl_div(lp, lp[-1:].expand_as(lp), log_target=True, reduction="none").sum(-1)
    np.testing.assert_allclose(res.kl_to_final, kl.numpy(), atol=1e-10)
    assert np.abs(res.kl_to_final[-1]).max() < 1e-12
    np.testing.assert_allclose(res.summary["target_logprob"].mean, tlp.mean((1, 2)).numpy())
    assert res.settings["apply_ln"] is True and res.settings["ln"] == "callable"


def test_weight_bias_pair_equals_module_and_course_variant_skips_ln(setup):
    x, W_U, b_U, ln, tg = setup
    a = lens_readout(x, W_U, b_U, ln=ln, targets=tg)
    b = lens_readout(x, W_U, b_U, ln=(ln.weight.detach(), ln.bias.detach()), targets=tg)
    np.testing.assert_allclose(a.target_logprob, b.target_logprob, atol=1e-10)
    # the course's variant: no norm on x_0..x_(L-1), the model's norm on x_L (HF hidden_states)
    c = lens_readout(x, W_U, targets=tg, apply_ln=False, ln=ln)
    with torch.no_grad():
        hs = torch.cat([x[:-1], ln(x[-1:])])
    ref = F.log_softmax(hs @ W_U, -1).gather(-1, tg[None, ..., None].expand(4, -1, -1, 1))[..., 0]
    np.testing.assert_allclose(c.target_logprob, ref.numpy(), atol=1e-10)
    faithful = lens_readout(x, W_U, ln=ln, targets=tg)
    np.testing.assert_allclose(c.target_logprob[-1], faithful.target_logprob[-1], atol=1e-10)
    assert np.abs(c.target_logprob[:-1] - faithful.target_logprob[:-1]).max() > 1e-3
    assert c.settings["variant"].startswith("course")
    # on states that are HF's hidden states already, nothing more is normalised
    d = lens_readout(hs, W_U, targets=tg, apply_ln=False, ln="identity")
    np.testing.assert_allclose(d.target_logprob, ref.numpy(), atol=1e-10)
    with pytest.raises(InputError, match="W_U"):
        lens_readout(x, W_U.T, ln=ln)


def test_bare_arrays_need_the_norm_named(setup):
    x, W_U, b_U, ln, tg = setup
    for apply_ln in (True, False):
        with pytest.raises(InputError, match="needs the final norm named.*parameter-free"):
            lens_readout(x, W_U, b_U, targets=tg, apply_ln=apply_ln)
    with pytest.raises(InputError, match="unknown ln 'layernorm'"):
        lens_readout(x, W_U, ln="layernorm")
    free = lens_readout(x, W_U, b_U, targets=tg, ln="parameter-free")
    with torch.no_grad():
        z = F.layer_norm(x, (x.shape[-1],), eps=1e-5) @ W_U + b_U
    ref = F.log_softmax(z, -1).gather(-1, tg[None, ..., None].expand(4, -1, -1, 1))[..., 0]
    np.testing.assert_allclose(free.target_logprob, ref.numpy(), atol=1e-10)
    assert free.settings["ln"] == "parameter-free"


def test_ln_f_final_state_is_not_normalised_twice(setup):
    x, W_U, b_U, ln, tg = setup
    with torch.no_grad():
        x2 = x.clone()
        x2[-1] = ln(x[-1])
    cap = types.SimpleNamespace(resid=x2, mask=torch.ones(2, 5, dtype=torch.bool),
                                final_state="ln_f", meta={"mode": "raw"})
    a = lens_readout(cap, W_U, b_U, ln=ln, targets=tg)
    b = lens_readout(x, W_U, b_U, ln=ln, targets=tg)
    np.testing.assert_allclose(a.target_logprob, b.target_logprob, atol=1e-10)


def test_padding_never_leaks_into_lens_summaries(setup):
    x, W_U, b_U, ln, tg = setup
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    x_pad = x.clone()
    x_pad[:, 1, 3:] = 1e4
    a = lens_readout(x, W_U, b_U, ln=ln, targets=tg, mask=mask).to_frame()
    b = lens_readout(x_pad, W_U, b_U, ln=ln, targets=tg, mask=mask).to_frame()
    np.testing.assert_allclose(a.value, b.value, atol=1e-10)


def test_lens_capture_is_summarised():
    rng = np.random.default_rng(0)
    m = np.ones((2, 3), bool)
    m[0, 2] = False
    ent = rng.random((4, 2, 3))
    tid = np.zeros((2, 3), int)
    tid[1, 2] = -1  # the core's "no next token": logprob NaN, rank -1
    rank = rng.integers(0, 3, (4, 2, 3))
    rank[:, 1, 2] = -1
    tlp = -rng.random((4, 2, 3))
    tlp[:, 1, 2] = np.nan
    cap = types.SimpleNamespace(
        target_logprob=torch.tensor(tlp), entropy=torch.tensor(ent),
        target_rank=torch.tensor(rank), kl_to_final=torch.tensor(ent),
        top_ids=torch.zeros(4, 2, 3, 2, dtype=torch.long), top_logprobs=torch.zeros(4, 2, 3, 2),
        target_ids=torch.tensor(tid), mask=torch.tensor(m), apply_ln=True,
        meta=types.SimpleNamespace(mode="compat"))
    res = lens_readout(cap)
    np.testing.assert_allclose(res.summary["entropy"].mean, ent[:, m].mean(1))
    has = m & (tid >= 0)
    hit = (rank == 0)[:, has].mean(1)
    np.testing.assert_allclose(res.summary["target_is_top1"].mean, hit)
    np.testing.assert_allclose(res.summary["target_rank"].mean, rank[:, has].mean(1))
    assert res.summary["target_logprob"].n.tolist() == [4] * 4
    assert res.summary["target_logprob"].n_nan.tolist() == [0] * 4
    assert res.settings["mode"] == "compat"


def test_missing_targets_are_left_out(setup):
    x, W_U, b_U, ln, tg = setup
    tg = tg.clone()
    tg[0, 4] = -1
    res = lens_readout(x, W_U, b_U, ln=ln, targets=tg)
    assert np.isnan(res.target_logprob[:, 0, 4]).all() and (res.target_rank[:, 0, 4] == -1).all()
    assert res.summary["target_rank"].n.tolist() == [9] * 4
    assert res.summary["entropy"].n.tolist() == [10] * 4


def test_weight_tying():
    E = np.random.default_rng(1).normal(size=(50, 8))
    tied = weight_tying(E.T.copy(), E)
    assert tied.tied and tied.max_abs_diff == 0 and tied.mean_cosine == pytest.approx(1.0)
    untied = weight_tying(E.T + 0.1, E)
    assert not untied.tied and untied.max_abs_diff == pytest.approx(0.1)


def test_spectrum_and_effective_rank():
    rng = np.random.default_rng(2)
    U = np.linalg.qr(rng.normal(size=(30, 4)))[0]
    V = np.linalg.qr(rng.normal(size=(100, 4)))[0]
    s = np.array([10.0, 5.0, 2.0, 1.0])
    W = U @ np.diag(s) @ V.T
    sp = unembedding_spectrum(W)
    np.testing.assert_allclose(sp.singular_values[:4], s, rtol=1e-10)
    lam = s**2
    np.testing.assert_allclose(sp.explained[:4], lam / lam.sum(), rtol=1e-10)
    assert sp.k95 == 2  # 100 + 25 of 130 = 96%
    assert sp.participation_ratio == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-8)
    p = s / s.sum()
    assert sp.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-8)
    assert effective_rank(np.eye(5)) == pytest.approx(5.0)
    assert effective_rank(np.ones((4, 4))) == pytest.approx(1.0)


def test_nan_state_warns_and_is_counted(setup):
    x, W_U, b_U, ln, tg = setup
    x = x.clone()
    x[1, 0, 2, 0] = float("nan")
    with pytest.warns(RuntimeWarning):
        res = lens_readout(x, W_U, b_U, ln=ln, targets=tg)
    assert res.summary["entropy"].n_nan.tolist() == [0, 1, 0, 0]
    assert np.isfinite(res.summary["entropy"].mean[1])


def test_chunking_does_not_change_results(setup):
    x, W_U, b_U, ln, tg = setup
    a = lens_readout(x, W_U, b_U, ln=ln, targets=tg, top_k=4)
    b = lens_readout(x, W_U, b_U, ln=ln, targets=tg, top_k=4, chunk_elements=23 * 3)  # 3 rows
    np.testing.assert_array_equal(a.top_ids, b.top_ids)
    for k in ("top_logprobs", "target_logprob", "target_rank", "entropy", "kl_to_final"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-12)


def test_capture_lens_uses_the_models_own_norm(model):
    """Given a capture, no norm needs naming: the capture carries the model's (the adapter's
    ln_final), and the numbers equal the LogitLens probe's, which reads the model's logits."""
    from conftest import PROMPTS

    import tlprobes as tp

    res = tp.run(model, PROMPTS, tp.Residual(), tp.LogitLens(top_k=2), batch_size=2)
    lens = res.logit_lens
    tg = lens.target_ids
    W_U, b_U = model.W_U.detach(), adapter_for(model).unembed_bias.detach()
    mine = lens_readout(res.residual, W_U, b_U, targets=tg)
    m = lens.mask.numpy()
    np.testing.assert_allclose(mine.target_logprob[:, m], lens.target_logprob[:, m].numpy(),
                               atol=2e-4, equal_nan=True)
    assert "model's final norm" in mine.settings["ln"]
    via_model = lens_readout(res.residual.resid, targets=tg, mask=res.residual.mask, model=model)
    # model= runs the model's own final norm and unembedding modules, in the model's float32;
    # (W_U, b_U) with the carried norm works in float64: equal to float32 rounding
    np.testing.assert_allclose(via_model.target_logprob, mine.target_logprob, rtol=1e-6,
                               atol=1e-6, equal_nan=True)
    if adapter_for(model).meta.mode != "raw":
        return  # compat mode folds the LayerNorm weights: parameter-free is then the model's own
    # the parameter-free LayerNorm (the old default) is measurably another lens on raw models
    free = lens_readout(res.residual, W_U, b_U, targets=tg, ln="parameter-free")
    assert np.nanmax(np.abs(free.target_logprob[-1] - mine.target_logprob[-1])) > 1e-3
