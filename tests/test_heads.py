"""tp.HeadSteps: per-head attribution of each block's step, checked against TL's own per-head
results (``stack_head_results``), ``logit_attrs``, the Components/Residual captures, the model's
logits, scipy's paired t-test, and the shipped models' known previous-token and induction heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import HAS_BRIDGE, HAS_HOOKED, PROMPTS, TL_MAJOR

import tlprobes as tp
from tlprobes._errors import InputError, ModelError, TLProbesError
from tlprobes.capture.heads import FIELDS, HeadStepsCapture

RTOL = 2e-5  # float32 rounding on these tiny models: sums over parts vs the state-derived values


def _tokens(model, n=4, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, model.cfg.d_vocab, (n, seq), generator=g)
    toks[:, 0] = 0
    mask = torch.ones_like(toks)
    mask[-1, seq - 4:] = 0  # one right-padded prompt
    return toks, mask


def _close(a, b, scale, rtol=RTOL):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    ok = torch.isfinite(a) & torch.isfinite(b)
    assert ok.sum() > 0
    assert torch.equal(torch.isfinite(a), torch.isfinite(b))
    err = (a[ok] - b[ok]).abs().max().item()
    assert err <= rtol * max(float(scale), 1.0), (err, scale)


def _run(model, toks, mask, **kw):
    return tp.run(
        model, toks, tp.HeadSteps(keep_tokens=True, **kw), tp.Residual(), tp.Components(),
        attention_mask=mask, batch_size=2, progress=False,
    )


def _stack_heads(model, toks, mask):
    """TL's per-head outputs ``[layer, head, batch, pos, d]`` and the cache."""
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, attention_mask=mask)
        stack = cache.stack_head_results(layer=-1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return stack.reshape(L, H, *stack.shape[1:]).double(), cache


# ------------------------------------------------------------------------------------------- sums
def test_parts_add_up_to_the_step(model):
    toks, mask = _tokens(model)
    res = _run(model, toks, mask)
    T, r, comp = res.head_steps.tokens, res.residual.resid.double(), res.components
    step = r[1:] - r[:-1]
    x = r[:-1]
    scale = r.norm(dim=-1).max()
    valid = res.residual.mask
    steplen = step.norm(dim=-1).masked_fill(~valid, float("nan"))
    # projections onto the step add up to its length; onto x_l to the step's radial part
    _close(T["step_proj"].sum(-1), steplen, scale)
    radial = ((step * x).sum(-1) / x.norm(dim=-1)).masked_fill(~valid, float("nan"))
    _close(T["state_proj"].sum(-1), radial, scale)
    # the angle shares add up to the rotation angle between x_l and x_(l+1)
    cos = torch.nn.functional.cosine_similarity(r[1:], r[:-1], dim=-1).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cos)).masked_fill(~valid, float("nan"))
    _close(T["angle"].sum(-1), angle, 90, 1e-3)
    # the MLP part is Components' mlp_out; heads + bias together are its attn_out
    u = step / step.norm(dim=-1, keepdim=True)
    H = model.cfg.n_heads
    mlp = (comp.mlp_out.double() * u).sum(-1).masked_fill(~valid, float("nan"))
    _close(T["step_proj"][..., H + 1], mlp, scale)
    _close(T["step_proj"][..., : H + 1].sum(-1),
           (comp.attn_out.double() * u).sum(-1).masked_fill(~valid, float("nan")), scale)


def test_heads_match_stack_head_results(model):
    toks, mask = _tokens(model)
    res = _run(model, toks, mask)
    T, r = res.head_steps.tokens, res.residual.resid.double()
    heads, _ = _stack_heads(model, toks, mask)  # [layer, head, batch, pos, d] (positions "all")
    heads = heads.permute(0, 2, 3, 1, 4)  # layer batch pos head d
    H = model.cfg.n_heads
    valid = res.residual.mask[None, :, :, None]
    nan = float("nan")
    step = (r[1:] - r[:-1])
    u = (step / step.norm(dim=-1, keepdim=True)).unsqueeze(3)
    scale = r.norm(dim=-1).max()
    _close(T["norm"][..., :H], heads.norm(dim=-1).masked_fill(~valid, nan), scale)
    _close(T["step_proj"][..., :H], (heads * u).sum(-1).masked_fill(~valid, nan), scale)
    xhat = (r[:-1] / r[:-1].norm(dim=-1, keepdim=True)).unsqueeze(3)
    _close(T["state_proj"][..., :H], (heads * xhat).sum(-1).masked_fill(~valid, nan), scale)
    # angle share: the block's angle times the head's share of the step's push perpendicular to x_l
    perp = step - (step.unsqueeze(3) * xhat).sum(-1) * xhat[:, :, :, 0]
    e = (perp / perp.norm(dim=-1, keepdim=True)).unsqueeze(3)
    cos = torch.nn.functional.cosine_similarity(r[1:], r[:-1], dim=-1).clamp(-1, 1)
    theta = torch.rad2deg(torch.acos(cos)).unsqueeze(-1)
    share = theta * (heads * e).sum(-1) / perp.norm(dim=-1).unsqueeze(-1)
    _close(T["angle"][..., :H], share.masked_fill(~valid, nan), 90, 1e-3)
    # what is left of attn_out beyond the heads is the output bias b_O
    L = model.cfg.n_layers
    b_O = torch.stack([model.blocks[l].attn.b_O.detach() for l in range(L)]).double()
    _close(T["norm"][..., H], b_O.norm(dim=-1)[:, None, None].expand_as(T["norm"][..., H])
           .masked_fill(~valid[..., 0], nan), scale)


def test_a_wrong_split_is_refused(model, monkeypatch):
    """Heads paired with the wrong W_O (or an architecture that changes the attention output after
    W_O) leave attn_out - sum(heads) far from b_O: HeadSteps raises instead of returning numbers."""
    import tlprobes.capture.heads as mod

    real = mod._w_o
    monkeypatch.setattr(mod, "_w_o", lambda ad, l: real(ad, l).flip(0))
    toks, mask = _tokens(model)
    with pytest.raises(ModelError, match="cannot split .* attention output into heads"):
        _run(model, toks, mask)


# -------------------------------------------------------------------------------------------- DLA
def test_dla_matches_logit_attrs_and_the_logits(model):
    toks, mask = _tokens(model)
    res = _run(model, toks, mask)
    T = res.head_steps.tokens
    heads, cache = _stack_heads(model, toks, mask)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    nxt = torch.cat([toks[:, 1:], toks[:, :1]], 1)
    with torch.no_grad():
        stack = cache.stack_head_results(layer=-1)
        if tp.adapter_for(model).meta.mode == "compat":  # TL's logit_attrs is the frozen-scale DLA
            ref = cache.logit_attrs(stack, tokens=nxt)
        else:  # raw mode: TL's apply_ln_to_stack freezes the scale but skips w; apply it ourselves
            fin = model.ln_final  # the final norm's weight, read off the model itself
            inner = getattr(fin, "original_component", fin)
            ln = inner.weight if hasattr(inner, "weight") else inner.w
            normed = cache.apply_ln_to_stack(stack, layer=-1)
            ref = ((normed * ln.detach()) * model.W_U.detach().T[nxt]).sum(-1)
        logits = model(toks, attention_mask=mask)
    ref = ref.reshape(L, H, *ref.shape[1:]).permute(0, 2, 3, 1)
    dla = T["dla"][..., :H]
    ok = torch.isfinite(dla)
    # the last valid token has no next token: NaN there and on padding
    assert not ok[:, :, -1].any() and not ok[:, -1, 7:].any()
    lim = ref.abs().max().item()
    assert (dla[ok] - ref.double()[ok]).abs().max() <= 1e-5 * max(lim, 1)
    # the frozen-scale total is the model's own logit of the next token
    want = logits.gather(-1, nxt[..., None])[..., 0].double()
    okt = torch.isfinite(T["logit"])
    assert (T["logit"][okt] - want[okt]).abs().max() <= 1e-4 * max(want.abs().max().item(), 1)
    # and every part plus the embedding plus a per-token constant adds up to it
    rest = T["logit"] - T["dla"].sum((0, 3)) - T["dla_embed"]
    by_token: dict[int, set] = {}
    for b, p in okt.nonzero().tolist():
        by_token.setdefault(int(nxt[b, p]), set()).add(round(float(rest[b, p]), 3))
    assert all(len(v) == 1 for v in by_token.values())


def test_dla_word_target_and_ablation(model):
    toks, mask = _tokens(model)
    word = int(toks[0, 3])
    res = _run(model, toks, mask, dla="ablate", dla_target=word)
    T = res.head_steps.tokens
    heads, cache = _stack_heads(model, toks, mask)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    x_final = cache[f"blocks.{L - 1}.hook_resid_post"].double()
    with torch.no_grad():
        def logit(x):  # through the model's own final norm module and unembedding
            return (model.ln_final(x.float()) @ model.W_U[:, word] + model.b_U[word]).double()

        base = logit(x_final)
        want = torch.stack(
            [base - logit(x_final - heads[l, h]) for l in range(L) for h in range(H)]
        )
    want = want.reshape(L, H, *want.shape[1:]).permute(0, 2, 3, 1)
    ok = res.residual.mask
    got = T["dla"][..., :H]
    assert torch.isfinite(got[:, ok]).all() and not torch.isfinite(got[:, ~ok]).any()
    assert (got[:, ok] - want[:, ok]).abs().max() <= 1e-4 * max(want.abs().max().item(), 1)


# -------------------------------------------------------------------------------------------- GQA
def _llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import _tokenizer

    d = tmp_path_factory.mktemp("llama_gqa")
    tok = _tokenizer()
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, attention_bias=True, architectures=["LlamaForCausalLM"],
    )
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def gqa_models(tmp_path_factory):
    out = {}
    if HAS_BRIDGE:
        out["bridge"] = tp.load_model(str(_llama_dir(tmp_path_factory)), kind="bridge")
    if HAS_HOOKED:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        from conftest import _tokenizer

        cfg = HookedTransformerConfig(
            n_layers=2, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64,
            d_vocab=300, n_ctx=64, act_fn="silu", normalization_type="RMS",
            positional_embedding_type="rotary", gated_mlp=True, seed=0, device="cpu",
        )
        ht = HookedTransformer(cfg, tokenizer=_tokenizer(), move_to_device=False).eval()
        with torch.no_grad():
            for name, p in ht.named_parameters():
                if "ln" in name or name.endswith("b_O"):
                    p.add_(0.3 * torch.randn_like(p))
        out["hooked"] = ht
    return out


@pytest.mark.parametrize("kind", ["bridge", "hooked"])
def test_grouped_query_attention(kind, gqa_models):
    if kind not in gqa_models:
        pytest.skip(f"no {kind} models on TL {TL_MAJOR}")
    model = gqa_models[kind]
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    assert n_kv is not None and n_kv < model.cfg.n_heads
    toks, mask = _tokens(model)
    res = _run(model, toks, mask)
    T, r = res.head_steps.tokens, res.residual.resid.double()
    valid = res.residual.mask
    nan = float("nan")
    scale = r.norm(dim=-1).max()
    step = r[1:] - r[:-1]
    _close(T["step_proj"].sum(-1), step.norm(dim=-1).masked_fill(~valid, nan), scale)
    heads, _ = _stack_heads(model, toks, mask)
    u = (step / step.norm(dim=-1, keepdim=True)).unsqueeze(3)
    H = model.cfg.n_heads
    _close(T["step_proj"][..., :H], (heads.permute(0, 2, 3, 1, 4) * u).sum(-1)
           .masked_fill(~valid[None, :, :, None], nan), scale)
    b_O = torch.stack([model.blocks[l].attn.b_O.detach() for l in range(2)]).double()
    assert b_O.abs().max() > 1e-3  # the bias part is not trivially zero
    _close(T["norm"][..., H], b_O.norm(dim=-1)[:, None, None].expand_as(T["norm"][..., H])
           .masked_fill(~valid, nan), scale)
    with torch.no_grad():
        logits = model(toks, attention_mask=mask)
    nxt = torch.cat([toks[:, 1:], toks[:, :1]], 1)
    want = logits.gather(-1, nxt[..., None])[..., 0].double()
    ok = torch.isfinite(T["logit"])
    assert (T["logit"][ok] - want[ok]).abs().max() <= 1e-4 * max(want.abs().max().item(), 1)


# -------------------------------------------------------------------------------------- streaming
def _bridge_or_hooked(tiny_dir, hf_model):
    from conftest import _build

    return _build("bridge" if HAS_BRIDGE else "hooked", tiny_dir, hf_model)


@pytest.fixture(scope="module")
def tiny(tiny_dir, hf_model):
    return _bridge_or_hooked(tiny_dir, hf_model)


def _her_run(model, bs=2, **kw):
    probe = tp.HeadSteps(positions=tp.Target(" her"), baseline=tp.Target(" her", offset=-1), **kw)
    prompts = [p for p in PROMPTS if " her" in p] * 3
    return tp.run(model, prompts, probe, progress=False, batch_size=bs).head_steps


def test_moments_are_the_per_prompt_values(tiny):
    hs = tp.run(
        tiny, [p for p in PROMPTS if " her" in p] * 3,
        tp.HeadSteps(positions=tp.Target(" her"), baseline=tp.Target(" her", offset=-1),
                     keep_tokens=True),
        batch_size=2, progress=False,
    ).head_steps
    for i, f in enumerate(FIELDS):
        tgt, base = hs.tokens[f][:, :, 0], hs.tokens[f][:, :, 1]  # [layer, prompt, part]
        if f == "dla":
            assert torch.isfinite(tgt).all()
        n = torch.isfinite(tgt).sum(1).double()
        assert torch.equal(hs.count(f), n)
        torch.testing.assert_close(hs.mean(f), tgt.nanmean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hs.mean(f, "baseline"), base.nanmean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hs.mean(f, "contrast"), (tgt - base).nanmean(1),
                                   rtol=1e-12, atol=1e-12)
    # the paired test from streamed moments is scipy's ttest_rel on the same per-prompt values
    from scipy import stats

    c = tp.head_contrast(hs, "angle", correction="bonferroni")
    a = hs.tokens["angle"].numpy()
    ref = stats.ttest_rel(a[:, :, 0], a[:, :, 1], axis=1)
    np.testing.assert_allclose(c.t, ref.statistic, rtol=1e-8)
    np.testing.assert_allclose(c.p, ref.pvalue, rtol=1e-6)
    np.testing.assert_allclose(c.p_adjusted, np.minimum(1, ref.pvalue * ref.pvalue.size), rtol=1e-6)


def test_batching_and_merge_order_do_not_matter(tiny):
    a = _her_run(tiny, bs=1)
    b = _her_run(tiny, bs=5)  # other batch shapes: the model's own float32 rounding differs
    for g in a.moments:
        assert torch.equal(a.moments[g]["n"], b.moments[g]["n"])
        for k in ("sum", "sumsq"):
            torch.testing.assert_close(a.moments[g][k], b.moments[g][k], rtol=1e-5, atol=1e-5)
    probe = tp.HeadSteps(positions=tp.Target(" her"), baseline=tp.Target(" her", offset=-1))
    shards = [tp.run(tiny, [p], probe, progress=False).head_steps for p in PROMPTS if " her" in p]
    fwd, rev = shards[0], shards[-1]
    for s in shards[1:]:
        fwd = fwd.merge(s)
    for s in shards[-2::-1]:
        rev = rev.merge(s)
    for g in fwd.moments:
        for k in ("n", "sum", "sumsq"):
            torch.testing.assert_close(fwd.moments[g][k], rev.moments[g][k], rtol=1e-12, atol=1e-12)
    assert fwd.moments["target"]["n"].max() == len(shards)


def test_padding_is_masked(tiny):
    """A prompt padded inside a batch gives the values it gives alone (left and right padding)."""
    prompts = PROMPTS[:2]
    alone = tp.run(tiny, prompts[:1], tp.HeadSteps(positions="all", keep_tokens=True),
                   progress=False)
    for side in ("right", "left"):
        both = tp.run(tiny, prompts, tp.HeadSteps(positions="all", keep_tokens=True),
                      padding_side=side, progress=False)
        t_alone = alone.head_steps.tokens["step_proj"][:, 0]
        t_both = both.head_steps.tokens["step_proj"][:, 0]
        keep = both.head_steps.mask[0]
        assert int(keep.sum()) == t_alone.shape[1] < keep.numel()
        assert torch.isnan(t_both[:, ~keep]).all()
        torch.testing.assert_close(t_both[:, keep], t_alone, rtol=1e-4, atol=1e-4)
        # the moments (positions averaged per prompt) count only real tokens
        one = [tp.run(tiny, [p], tp.HeadSteps(), progress=False).head_steps for p in prompts]
        m_both = tp.run(tiny, prompts, tp.HeadSteps(), padding_side=side, progress=False).head_steps
        for f in FIELDS:
            torch.testing.assert_close(m_both.mean(f), one[0].merge(one[1]).mean(f),
                                       rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from tlprobes._state import FORMAT, load_state, save_state

    hs = _her_run(tiny, keep_tokens=True)
    sd = hs.state_dict()
    back = HeadStepsCapture.from_state_dict(sd)
    assert back.parts == hs.parts and back.settings == hs.settings and back.meta == hs.meta
    for g in hs.moments:
        for k, v in hs.moments[g].items():
            assert torch.equal(back.moments[g][k], v)
    for k, v in hs.tokens.items():
        assert torch.equal(back.tokens[k], v, ) or torch.equal(back.tokens[k].isnan(), v.isnan())
        assert torch.equal(back.tokens[k].nan_to_num(7.0), v.nan_to_num(7.0))
    # one safetensors file through the state protocol: tensors as tensors, the rest as JSON
    path = save_state(tmp_path / "hs.safetensors", sd)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        info = json.loads(f.metadata()[FORMAT])["state"]
    loaded = load_file(path)
    assert set(loaded) >= {"moments.contrast.sumsq", "tokens.angle"}
    again = HeadStepsCapture.from_state_dict(load_state(path))
    assert torch.equal(again.moments["contrast"]["sumsq"], hs.moments["contrast"]["sumsq"])
    assert info["settings"]["baseline"].startswith("Target(")
    # the flat layout of earlier versions (tensors plus a JSON "info" string) still loads
    legacy_info = {"parts": list(hs.parts), "settings": hs.settings, "meta": hs.meta.to_dict(),
                   "groups": list(hs.moments)}
    save_file(hs.tensors(), tmp_path / "old.safetensors",
              metadata={"info": json.dumps(legacy_info, sort_keys=True)})
    with safe_open(tmp_path / "old.safetensors", "pt") as f:
        old_info = f.metadata()["info"]
    old = HeadStepsCapture.from_state_dict({**load_file(tmp_path / "old.safetensors"),
                                            "info": old_info})
    assert torch.equal(old.moments["contrast"]["sumsq"], hs.moments["contrast"]["sumsq"])
    assert json.loads(old_info)["settings"]["baseline"].startswith("Target(")
    html = back.to_html()  # the capture shows itself (heatmaps), also after a round trip
    assert html.count("<img") == 3 and "HeadSteps" in html
    merged = back.merge(hs)
    torch.testing.assert_close(merged.moments["target"]["sum"], 2 * hs.moments["target"]["sum"])


# -------------------------------------------------------------------------------------- bad input
def test_bad_inputs(tiny):
    with pytest.raises(InputError, match="unknown dla 'exact'"):
        tp.HeadSteps(dla="exact")
    with pytest.raises(InputError, match="dla_target"):
        tp.HeadSteps(dla_target=True)
    with pytest.raises(InputError, match="outside the vocabulary"):
        tp.run(tiny, PROMPTS[:1], tp.HeadSteps(dla_target=10**6), progress=False)
    with pytest.raises(InputError, match="tokens"):
        tp.run(tiny, PROMPTS[:1], tp.HeadSteps(dla_target=" unbelievably boring"), progress=False)
    hs = tp.run(tiny, PROMPTS[:1], tp.HeadSteps(), progress=False).head_steps
    with pytest.raises(InputError, match="unknown field 'angles'.*'angle'"):
        hs.mean("angles")
    with pytest.raises(InputError, match="no baseline"):
        tp.head_contrast(hs)
    with pytest.raises(InputError, match="no group 'contrast'.*baseline="):
        tp.head_ranking(hs, group="contrast")
    with pytest.raises(TLProbesError):
        tp.head_ranking(object())


# --------------------------------------------------------------------------------- shipped models
@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "default-s1"])
def test_ranking_finds_previous_token_and_induction_heads(name):
    """[BOS] + R + R on random tokens: in layer 0 the previous-token head (L0H3) writes the largest
    part of the step; in layer 1 the card's induction heads are the top direct contributors to the
    next token on the second copy, and the ones that grow most from the first copy to the second."""
    from pathlib import Path

    import tlprobes.models as tm

    card = json.loads((tm.model_dir(name) / "card.json").read_text())
    induction = {int(h.split(".")[1]) for h in card["induction_heads"] if h.startswith("1.")}
    assert len(induction) == 3
    model = tm.load_model(name)
    text = (Path(__file__).resolve().parents[1] / "probes" / "prompts" / "general.txt").read_text()
    pool = torch.unique(model.to_tokens(text, prepend_bos=False)[0])
    g = torch.Generator().manual_seed(11)
    P, n = 16, 24
    block = pool[torch.randint(len(pool), (n, P), generator=g)]
    tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), block, block], 1)
    second, first = list(range(P + 1, 2 * P)), list(range(1, P))
    hs = tp.run(model, tokens, tp.HeadSteps(positions=second, baseline=first), batch_size=12,
                progress=False).head_steps
    assert tp.head_ranking(hs, "norm").top(0) == [3]
    assert tp.head_ranking(hs, "step_proj").top(0) == [3]
    dla = tp.head_ranking(hs, "dla")
    assert set(dla.top(1, 3)) == induction
    best = dla.summary["ci_low"][1, dla.top(1)[0]]
    assert best > 0  # the best induction head's CI over prompts excludes 0
    c = tp.head_contrast(hs, "dla")
    top = c.top(3)
    assert set(top["head"]) == induction and set(top["layer"]) == {1}
    assert (top["reject"] == 1).all()


# ---------------------------------------------------------------------------------- suite section
def test_rotation_angles_suite_has_the_which_heads_section(tmp_path, tiny):
    from pathlib import Path

    from tlprobes.suites import load_results, run_suite
    from tlprobes.suites._run import render_run

    import shutil

    probes = Path(__file__).resolve().parents[1] / "probes"
    shutil.copytree(probes / "prompts", tmp_path / "prompts")  # prompt files stay beside the suite
    text = (probes / "rotation_angles.toml").read_text()
    text = text.replace('file = "prompts/', 'limit = 12\nfile = "prompts/')
    (tmp_path / "s.toml").write_text(text)
    out = tmp_path / "run"
    report = run_suite(tmp_path / "s.toml", out=out, model=tiny, quiet=True)
    res = load_results(out)
    df = res.tables["heads_contrast_angle"]
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert len(df) == L * (H + 2)
    assert set(df["part"]) == {*(f"H{h}" for h in range(H)), "attn_bias", "mlp"}
    # a block's shares add up to its mean angle at the target (angles table, layer l + 1)
    angles = res.tables["angles_clean"]
    tgt = angles[(angles["group"] == "target") & (angles["statistic"] == "mean")]
    tgt = tgt.sort_values("layer")
    shares = df.groupby("layer")["target_mean"].sum().sort_index().to_numpy()
    np.testing.assert_allclose(shares, tgt["value"].to_numpy(), rtol=1e-3)
    assert {"heads_ranking_angle", "heads_ranking_dla"} <= set(res.tables)
    for html in (report.read_text(encoding="utf-8"), render_run(out).read_text(encoding="utf-8")):
        section = html[html.rindex("Which heads turn"):]
        assert section.count("<img") == 2 and "more than the word before it" in section
        assert "block 0 is layer 1" in section
