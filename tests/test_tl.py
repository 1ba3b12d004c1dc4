"""The TransformerLens layer (``src/tlprobes/_tl/``): hook handles, tokens and the session's use
of them, on every model kind of the running TL line."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, hook_snapshot

import tlprobes as tp
from tlprobes._errors import InputError
from tlprobes._tl import hooks, tokens
from tlprobes._tl.adapter import adapter_for


def test_add_returns_a_handle_that_removes_exactly_its_hook(fresh_model):
    model = fresh_model
    before = hook_snapshot(model)
    point = adapter_for(model).hook_point("resid_post", 0)
    seen: list = []
    handles = [hooks.add(point, lambda t, hook=None: seen.append(1)) for _ in range(2)]
    model(model.to_tokens(PROMPTS[0]))
    assert len(seen) == 2
    assert hooks.remove_hooks(handles[:1]) == []
    model(model.to_tokens(PROMPTS[0]))
    assert len(seen) == 3  # the other hook still fires
    assert hooks.remove_hooks(handles[1:]) == []
    assert hook_snapshot(model) == before


def test_a_failed_attach_leaves_no_hook(fresh_model, monkeypatch):
    """Registration that fails half way (here: the second hook point) removes every hook the
    session had added, the model-level ones included."""
    model = fresh_model
    before = hook_snapshot(model)
    forward_hooks = dict(model._forward_hooks), dict(model._forward_pre_hooks)
    real, calls = hooks.add, []

    def flaky(point, fn):
        calls.append(point)
        if len(calls) == 2:
            raise RuntimeError("cannot hook")
        return real(point, fn)

    monkeypatch.setattr(hooks, "add", flaky)
    with pytest.raises(RuntimeError, match="cannot hook"):
        with tp.attach(model, tp.Residual()):
            pass
    assert len(calls) == 2
    assert hook_snapshot(model) == before
    assert (dict(model._forward_hooks), dict(model._forward_pre_hooks)) == forward_hooks


def test_pad_sequences_right_and_left():
    t, m = tokens.pad_sequences([[5, 6, 7], [8]], pad_id=0, side="left", width=4)
    assert t.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert m.tolist() == [[False, True, True, True], [False, False, False, True]]
    with pytest.raises(InputError, match="'right', 'left'"):
        tokens.pad_sequences([[1]], pad_id=0, side="middle")


def test_session_forward_names_the_prompt_in_errors(model):
    """``Session.forward(..., prompts=...)`` is how tp.run tells the session which prompt a row
    is: a missing target names the prompt's text."""
    ad = adapter_for(model)
    ids = [ad.encode(p) for p in PROMPTS[:2]]
    toks, mask = tokens.pad_sequences(ids, pad_id=ad.pad_token_id())
    probe = tp.Residual(positions=tp.Target(" zebra"))
    with pytest.raises(tp.errors.PositionError, match=repr(PROMPTS[0][:20])[:-1]):
        with tp.attach(model, probe) as s:
            s.forward(toks, mask.long(), prompts=PROMPTS[:2])
    with pytest.raises(tp.errors.PositionError) as err:
        with tp.attach(model, probe) as s:
            s.forward(toks, mask.long())
    assert PROMPTS[0][:20] not in str(err.value)  # no prompts given: rows are numbered only


def test_run_equals_session_forward(model):
    ad = adapter_for(model)
    ids = [ad.encode(p) for p in PROMPTS[:3]]
    toks, mask = tokens.pad_sequences(ids, pad_id=ad.pad_token_id())
    with tp.attach(model, tp.Residual()) as s:
        s.forward(toks, mask.long(), prompts=PROMPTS[:3])
    via_run = tp.run(model, PROMPTS[:3], tp.Residual(), batch_size=3)
    torch.testing.assert_close(s.result.residual.resid, via_run.residual.resid, atol=0, rtol=0)
