"""attach: one pass captures all, hooks are removed exactly, user hooks are never touched."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, hook_snapshot

import tlprobes as tp


def _tokens(model, side="right"):
    res = tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=len(PROMPTS), padding_side=side)
    return res.inputs.tokens, res.inputs.attention_mask


def test_attach_captures_the_users_own_call(model):
    tokens, mask = _tokens(model)
    before = hook_snapshot(model)
    with tp.attach(model, tp.Residual(), tp.Attention(layers=[0, 2]), tp.LogitLens(top_k=5)) as s:
        assert hook_snapshot(model) != before
        with torch.no_grad():
            model(tokens, attention_mask=mask.long())
    assert hook_snapshot(model) == before
    res = s.result
    assert set(res) == {"residual", "attention", "logit_lens"}
    assert res.residual.resid.shape == (model.cfg.n_layers + 1, *tokens.shape, model.cfg.d_model)
    assert res.attention.layers == (0, 2)
    assert torch.equal(res.residual.mask, mask)
    assert res.logit_lens.top_ids.shape[-1] == 5
    # a second call inside one session appends along the batch axis
    with tp.attach(model, tp.Residual(positions="last")) as s2:
        with torch.no_grad():
            model(tokens[:2], attention_mask=mask[:2].long())
            model(tokens[2:], attention_mask=mask[2:].long())
    assert s2.result.residual.resid.shape[1] == len(PROMPTS)
    torch.testing.assert_close(s2.result.residual.resid, res.residual.resid.gather(
        2, (mask.sum(1) - 1).view(1, -1, 1, 1).expand(res.residual.resid.shape[0], -1, 1, model.cfg.d_model)))



def test_logit_lens_runs_after_the_model_call_returns(model):
    """The lens's vocabulary-sized work is deferred until the forward call has returned (so the
    model's own logits are not alive at the peak): before the next call, or on result."""
    tokens, mask = _tokens(model)
    in_call = [False]
    seen: list[bool] = []
    grad_modes: list[bool] = []

    class Spy(tp.LogitLens):
        def finish_batch(self, piece, ctx):
            seen.append(in_call[0])
            grad_modes.append(torch.is_grad_enabled())
            return super().finish_batch(piece, ctx)

    with tp.attach(model, Spy(top_k=3)) as s:
        # registered after attach: set before and cleared after everything tlprobes does in a call
        h1 = model.register_forward_pre_hook(lambda m, a: in_call.__setitem__(0, True))
        h2 = model.register_forward_hook(lambda m, a, o: in_call.__setitem__(0, False))
        try:
            with torch.no_grad():
                model(tokens[:2], attention_mask=mask[:2].long())
                assert seen == []  # not yet: nothing has asked for it
                model(tokens[2:], attention_mask=mask[2:].long())
                assert seen == [False]  # the first batch, at the start of the second call
        finally:
            h1.remove()
            h2.remove()
    assert seen == [False, False]  # the second, on detach
    assert grad_modes == [False, False]  # no autograd graph, although detach ran outside no_grad
    ran = tp.run(model, tokens, tp.LogitLens(top_k=3), attention_mask=mask, batch_size=len(PROMPTS))
    torch.testing.assert_close(s.result.logit_lens.entropy, ran.logit_lens.entropy)
    assert torch.equal(s.result.logit_lens.top_ids, ran.logit_lens.top_ids)

def test_string_input_is_tokenised_like_the_model(model):
    with tp.attach(model, tp.Residual(positions="last")) as s:
        with torch.no_grad():
            model(PROMPTS)
    ran = tp.run(model, PROMPTS, tp.Residual(positions="last"))
    torch.testing.assert_close(s.result.residual.resid, ran.residual.resid, atol=1e-5, rtol=0)
    assert s.result.inputs.prompts == PROMPTS


def test_meta_records_the_model(model, model_kind):
    res = tp.run(model, PROMPTS[:1], tp.ResidualMean())
    meta = res.meta.to_dict()
    assert meta["mode"] == ("compat" if model_kind.endswith("compat") else "raw")
    assert meta["model_kind"] == ("HookedTransformer" if model_kind.startswith("hooked") else "TransformerBridge")
    assert meta["tl_version"][0] in "234"
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["n_layers"] == model.cfg.n_layers


def test_padding_never_changes_a_capture(model):
    """A prompt alone, right-padded or left-padded in a batch: the same vectors on real tokens."""
    probes = (tp.Residual(positions=tp.Target(" her")), tp.LogitLens(positions="last"), tp.Steps(positions=[0, -1]))
    alone = tp.run(model, PROMPTS[1:2], *probes)
    for side in ("right", "left"):
        batch = tp.run(model, [PROMPTS[0], PROMPTS[1], PROMPTS[3]], *probes, padding_side=side)
        torch.testing.assert_close(batch.residual.resid[:, 1], alone.residual.resid[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            batch.logit_lens.target_logprob[:, 1], alone.logit_lens.target_logprob[:, 0], equal_nan=True
        )
        torch.testing.assert_close(batch.steps.angle[:, 1], alone.steps.angle[:, 0], atol=1e-4, rtol=0)


def test_target_positions(model):
    her = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    res = tp.run(model, her, tp.Residual(positions=tp.Target(" her")), tp.Residual(
        positions=tp.Target(" her", offset=-1), name="before"), tp.Residual(name="all"),
        padding_side="left")
    assert res.residual.selected_str_tokens() == [[" her"]] * 3
    words = [row[0] for row in res.before.selected_str_tokens()]  # last sub-token of the word before
    assert all(w and full.endswith(w) for w, full in zip(words, [" saw", " gave", " told"]))
    assert res.residual.mask.all()
    # selected vectors are the right rows of the full capture
    for b in range(3):
        p = res.residual.positions[b, 0]
        assert res.before.positions[b, 0] == p - 1
        torch.testing.assert_close(res.residual.resid[:, b, 0], res.all.resid[:, b, p])


def test_multi_token_target_uses_last_subtoken(model):
    tok = model.tokenizer
    word = " unbelievably"
    ids = tok(word, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the test word must split into several tokens"
    res = tp.run(model, PROMPTS[1:2], tp.Residual(positions=tp.Target(word)), tp.Residual(
        positions=tp.Target(word, piece="first"), name="first_piece"), tp.Residual(
        positions=tp.Target(word, offset=-1), name="before"))
    pos = res.residual.positions[0, 0].item()
    assert res.inputs.tokens[0, pos].item() == ids[-1]
    assert res.inputs.tokens[0, pos - len(ids) + 1 : pos + 1].tolist() == ids
    assert res.first_piece.positions[0, 0].item() == pos - len(ids) + 1
    assert res.before.positions[0, 0].item() == pos - len(ids)  # offsets count from its edges


def test_explicit_positions_count_valid_tokens(model):
    for side in ("right", "left"):
        res = tp.run(model, PROMPTS, tp.Residual(positions=[0, -1]), padding_side=side)
        toks, pos = res.inputs.tokens, res.residual.positions
        mask = res.inputs.attention_mask
        for b in range(len(PROMPTS)):
            valid = mask[b].nonzero().flatten()
            assert pos[b].tolist() == [valid[0].item(), valid[-1].item()]
        assert toks.gather(1, pos[:, :1]).flatten().tolist() == [toks[b, mask[b]][0].item() for b in range(4)]


def test_one_probe_instance_serves_two_models_at_once(model):
    """Probes are configuration only: resolved layers live in each session, not on the probe."""
    other = tp.load_model("default")  # 4 layers; the test model has 3
    probe = tp.Attention(layers=[-1], heads=[0])
    comps = tp.Components(layers=[0, -1])
    with tp.attach(model, probe, comps) as s1, tp.attach(other, probe, comps) as s2:
        model(PROMPTS[:1])
        other(["Mary saw her brother."])
    assert s1.result.attention.layers == (model.cfg.n_layers - 1,)
    assert s2.result.attention.layers == (other.cfg.n_layers - 1,)
    assert s1.result.components.layers == (0, model.cfg.n_layers - 1)
    assert s2.result.components.layers == (0, other.cfg.n_layers - 1)
    assert s2.result.components.attn_out.shape[-1] == other.cfg.d_model


@pytest.mark.parametrize("offset", [0, -1, -3, 1])
def test_single_token_fast_path_equals_the_general_path(offset):
    """One-token targets are resolved with tensor ops; the per-row path must agree with them."""
    from tlprobes.capture._positions import resolve_positions

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, 50, (6, 12), generator=gen)
    lengths = [12, 9, 7, 12, 5, 10]
    for side in ("right", "left"):
        mask = torch.zeros(6, 12, dtype=torch.bool)
        for b, n in enumerate(lengths):
            mask[b, :n] = side == "right"
            if side == "left":
                mask[b, 12 - n :] = True
        toks = tokens.clone()
        for b, n in enumerate(lengths):  # plant token 7 once, at the 4th real token
            toks[b, mask[b].nonzero().flatten()[3]] = 7
        fast = resolve_positions(tp.Target(7, offset=offset), toks, mask)
        slow = resolve_positions(tp.Target(7, offset=offset, occurrence="all"), toks, mask)
        assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
        if offset == 0:
            assert (toks.gather(1, fast[0])[:, 0] == 7).all()
    with pytest.raises(tp.errors.PositionError, match="falls outside"):
        resolve_positions(tp.Target(7, offset=-4), toks, mask)
