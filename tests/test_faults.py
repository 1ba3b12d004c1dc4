"""Bad input gets a precise error, and no failure ever leaves a hook behind or touches the user's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import PROMPTS, hook_snapshot

import tlprobes as tp
from tlprobes.capture import Residual


@dataclass(frozen=True)
class Exploding(Residual):
    """A probe that raises in the middle of the forward pass (at block 1)."""

    name: str = "exploding"

    def on_activation(self, site, layer, t, scratch, ctx):
        if layer == 1:
            raise RuntimeError("probe exploded")
        super().on_activation(site, layer, t, scratch, ctx)


def _user_hooks(model):
    """A temporary and a permanent user hook that count their calls."""
    calls = {"temp": 0, "perm": 0}

    def temp(t, hook):
        calls["temp"] += 1

    def perm(t, hook):
        calls["perm"] += 1

    model.add_hook("blocks.0.hook_resid_pre", temp)
    model.add_hook("blocks.1.hook_resid_post", perm, is_permanent=True)
    return calls


def _tokens(model):
    return torch.tensor([model.tokenizer(PROMPTS[0])["input_ids"]])


def test_probe_raising_mid_forward_leaves_no_hook(fresh_model):
    model = fresh_model
    calls = _user_hooks(model)
    before = hook_snapshot(model)
    with pytest.raises(RuntimeError, match="probe exploded"):
        with tp.attach(model, tp.Attention(), Exploding()):
            model(_tokens(model))
    assert hook_snapshot(model) == before
    with pytest.raises(RuntimeError, match="probe exploded"):
        tp.run(model, PROMPTS, Exploding(), tp.Steps())
    assert hook_snapshot(model) == before
    n = dict(calls)
    model(_tokens(model))  # the user's hooks still fire, once each
    assert calls["temp"] == n["temp"] + 1 and calls["perm"] == n["perm"] + 1


def test_user_hook_raising_mid_forward_leaves_no_hook(fresh_model):
    model = fresh_model
    calls = _user_hooks(model)

    def boom(t, hook):
        raise ValueError("user hook failed")

    model.add_hook("blocks.2.hook_mlp_out", boom, is_permanent=True)
    before = hook_snapshot(model)
    with pytest.raises(ValueError, match="user hook failed"):
        tp.run(model, PROMPTS, tp.Residual(), tp.LogitLens(), tp.Components())
    assert hook_snapshot(model) == before
    assert calls["temp"] >= 1
    # remove the failing hook the user's way: ours never interfere with reset_hooks
    model.reset_hooks(including_permanent=True)
    res = tp.run(model, PROMPTS[:1], tp.Residual())
    assert res.residual.resid.shape[1] == 1


def test_user_hooks_keep_their_order(fresh_model):
    model = fresh_model
    seen = []
    model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: seen.append("a"))
    model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: seen.append("b"))
    tp.run(model, PROMPTS[:1], tp.Residual())
    assert seen == ["a", "b"]
    model.reset_hooks()


def _assert_clean_error(model, exc, match, fn):
    before = hook_snapshot(model)
    with pytest.raises(exc, match=match) as info:
        fn()
    assert isinstance(info.value, tp.TLProbesError)
    assert hook_snapshot(model) == before
    return info.value


def test_bad_input_errors(model):
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    err = _assert_clean_error(model, tp.errors.SiteError, "resid_middle", lambda: tp.Activation("resid_middle"))
    assert "resid_mid" in str(err) and isinstance(err, KeyError)
    _assert_clean_error(model, tp.errors.SiteError, "hook_resid_pree",
                        lambda: tp.run(model, PROMPTS, tp.Activation("blocks.0.hook_resid_pree")))
    err = _assert_clean_error(model, tp.errors.LayerError, "out of range",
                              lambda: tp.run(model, PROMPTS, tp.Attention(layers=[0, 99])))
    assert "99" in str(err) and f"0..{n_layers - 1}" in str(err) and isinstance(err, IndexError)
    err = _assert_clean_error(model, tp.errors.HeadError, "head 7",
                              lambda: tp.run(model, PROMPTS, tp.Attention(heads=[7])))
    assert f"0..{n_heads - 1}" in str(err)
    err = _assert_clean_error(model, tp.errors.PositionError, "absent",
                              lambda: tp.run(model, PROMPTS, tp.Residual(positions=tp.Target(" zebra"))))
    assert "prompt 0" in str(err) and isinstance(err, ValueError)
    err = _assert_clean_error(model, tp.errors.PositionError, "absent", lambda: _attach_absent(model))
    err = _assert_clean_error(model, tp.errors.InputError, "longer than",
                              lambda: tp.run(model, ["word " * 200], tp.Residual()))
    assert str(model.cfg.n_ctx) in str(err)
    err = _assert_clean_error(model, tp.errors.InputError, "mix strings and token ids",
                              lambda: tp.run(model, ["a b", [1, 2, 3]], tp.Residual()))
    _assert_clean_error(model, tp.errors.PositionError, "unknown position selector",
                        lambda: tp.Residual(positions="middle"))
    _assert_clean_error(model, tp.errors.InputError, "padding_side",
                        lambda: tp.run(model, PROMPTS, tp.Residual(), padding_side="center"))
    _assert_clean_error(model, tp.TLProbesError, "two probes are named",
                        lambda: tp.run(model, PROMPTS, tp.Residual(), tp.Residual()))
    _assert_clean_error(model, tp.errors.PositionError, "out of range",
                        lambda: tp.run(model, PROMPTS, tp.Residual(positions=[40])))



def test_token_tensor_input_errors_and_equivalence(model):
    """An unpadded id tensor takes a fast path (row slices, tensor checks); it must give the same
    captures as the same ids as lists, and the same errors."""
    ids = model.to_tokens(PROMPTS[:1])
    ids = ids.repeat(3, 1)
    ids[1, -1], ids[2, 0] = 5, 7
    fast = tp.run(model, ids, tp.Residual(positions=tp.Target(int(ids[0, 2]))), batch_size=2)
    slow = tp.run(model, ids.tolist(), tp.Residual(positions=tp.Target(int(ids[0, 2]))), batch_size=2)
    assert torch.equal(fast.residual.resid, slow.residual.resid)
    assert torch.equal(fast.inputs.tokens, slow.inputs.tokens)
    bad = ids.clone()
    bad[2, 1] = model.cfg.d_vocab
    err = _assert_clean_error(model, tp.errors.InputError, "outside the vocabulary",
                              lambda: tp.run(model, bad, tp.Residual()))
    assert "prompt 2" in str(err) and str(model.cfg.d_vocab) in str(err)
    long = torch.zeros((1, model.cfg.n_ctx + 1), dtype=torch.long)
    err = _assert_clean_error(model, tp.errors.InputError, "longer than", lambda: tp.run(model, long, tp.Residual()))
    assert str(model.cfg.n_ctx) in str(err)
    _assert_clean_error(model, tp.errors.InputError, "LongTensor",
                        lambda: tp.run(model, ids.float(), tp.Residual()))
    _assert_clean_error(model, tp.errors.InputError, "empty",
                        lambda: tp.run(model, ids[:, :0], tp.Residual()))

def _attach_absent(model):
    with tp.attach(model, tp.Attention(), tp.Residual(positions=tp.Target(" zebra"))):
        model(PROMPTS)


def test_not_a_tl_model():
    with pytest.raises(tp.errors.ModelError, match="HookedTransformer") as info:
        tp.attach(torch.nn.Linear(2, 2), tp.Residual())
    assert "Linear" in str(info.value) and isinstance(info.value, TypeError)
    with pytest.raises(tp.errors.ModelError):
        tp.run("gpt2", ["hi"], tp.Residual())


def test_partial_forward_is_refused(model):
    before = hook_snapshot(model)
    with pytest.raises(tp.errors.InputError, match="stop_at_layer"):
        with tp.attach(model, tp.Residual()):
            model(_tokens(model), stop_at_layer=1)
    assert hook_snapshot(model) == before


def test_session_goes_on_after_a_keyboard_interrupt_mid_forward(fresh_model):
    """A pass killed by a BaseException (torch's always_call hooks miss it) must not leave the
    session believing the next pass is nested: it captures, and real nesting is still refused."""
    model = fresh_model
    fired = {"n": 0}

    def interrupt(t, hook):
        fired["n"] += 1
        if fired["n"] == 1:
            raise KeyboardInterrupt

    model.add_hook("blocks.1.hook_resid_post", interrupt)
    with tp.attach(model, tp.Residual()) as session:
        with pytest.raises(KeyboardInterrupt):
            model(_tokens(model))
        model(_tokens(model))  # the user's retry: captured, not refused as a nested pass

        def nested(t, hook):
            model(_tokens(model))

        model.add_hook("blocks.0.hook_resid_post", nested)
        with pytest.raises(tp.TLProbesError, match="inside another one"):
            model(_tokens(model))
    model.reset_hooks()
    assert session.result.residual.resid.shape[1] == 1
