"""Attention capture without a second copy, query-row selection, and captures that never change.

Oracles: TL's own ``run_with_cache`` patterns and a full ``tp.Attention()`` capture sliced by hand.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KINDS

import tlprobes as tp

HER_PROMPTS = [
    "Mary saw her brother and gave her book to him.",
    "She told her friend that the weather was nice today.",
    "John told her that the store was closed.",
    "Mary saw her brother.",
]
BRIDGE_KINDS = [k for k in KINDS if k.startswith("bridge") or k == "native"]


def _pattern_modules(model):
    return [model.get_submodule(f"blocks.{l}.attn") for l in range(model.cfg.n_layers)]


def test_full_capture_keeps_the_models_tensors_not_copies(fresh_model):
    """The capture holds the very tensors the model computed (no copy), and the model no longer does."""
    seen: dict[int, int] = {}
    for l in range(fresh_model.cfg.n_layers):
        def note(t, hook, l=l):
            seen[l] = t.data_ptr()
        fresh_model.add_hook(f"blocks.{l}.attn.hook_pattern", note)
    res = tp.run(fresh_model, HER_PROMPTS, tp.Attention(), batch_size=len(HER_PROMPTS))
    att = res.attention
    for l in range(fresh_model.cfg.n_layers):
        assert att.pattern_at(l).data_ptr() == seen[l]
    for module in _pattern_modules(fresh_model):  # the bridge's last-pass reference is released
        assert getattr(module, "_pattern", None) is None


def test_capture_never_changes_when_the_model_runs_again(fresh_model):
    res = tp.run(fresh_model, HER_PROMPTS, tp.Attention(), tp.Attention(positions=tp.Target(" her"), name="her"),
                 batch_size=len(HER_PROMPTS))
    full = [p.clone() for p in res.attention.layer_patterns]
    rows = res.her.pattern.clone()
    tokens = res.inputs.tokens

    def scribble(t, hook):  # a later pass that writes into its own patterns in place
        t.mul_(0.5)
    for l in range(fresh_model.cfg.n_layers):
        fresh_model.add_hook(f"blocks.{l}.attn.hook_pattern", scribble)
    with torch.no_grad():
        fresh_model(tokens)
        fresh_model(tokens.flip(0))
    fresh_model.reset_hooks()
    tp.run(fresh_model, HER_PROMPTS[::-1], tp.Attention(), batch_size=2)
    for got, want in zip(res.attention.layer_patterns, full):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(res.her.pattern, rows, atol=0, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_full_capture_matches_run_with_cache(model, side):
    res = tp.run(model, HER_PROMPTS, tp.Attention(), batch_size=len(HER_PROMPTS), padding_side=side)
    with torch.no_grad():
        _, cache = model.run_with_cache(res.inputs.tokens, attention_mask=res.inputs.attention_mask.long())
    want = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)])
    torch.testing.assert_close(res.attention.pattern, want, atol=0, rtol=0)
    # pattern (stacked on first access) and the per-layer tensors agree afterwards
    for l in range(model.cfg.n_layers):
        torch.testing.assert_close(res.attention.pattern_at(l), want[l], atol=0, rtol=0)
    assert res.attention.pattern_at(0).data_ptr() == res.attention.pattern.data_ptr()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [4, 3])
def test_query_rows_equal_the_full_capture_sliced(model, side, batch_size):
    """Attention(positions=Target(" her")) keeps [layer, head, src] per prompt: the full pattern's rows."""
    res = tp.run(
        model, HER_PROMPTS, tp.Attention(), tp.Attention(positions=tp.Target(" her"), name="her"),
        tp.Attention(layers=[1, 0], heads=[3, 1], positions=tp.Target(" her", offset=-1), name="before"),
        tp.Residual(positions=tp.Target(" her")),
        batch_size=batch_size, padding_side=side,
    )
    full, her, before = res.attention.pattern, res.her, res.before
    pos = res.residual.positions  # the resolver's answer, [batch, 1]
    torch.testing.assert_close(her.positions, pos, atol=0, rtol=0)
    assert her.pattern.shape == (*full.shape[:3], 1, full.shape[-1])
    for b in range(len(HER_PROMPTS)):
        p = int(pos[b, 0])
        ids = res.inputs.tokens[b].tolist()
        assert res.inputs.str_tokens[b][p] == " her" or ids[p] == model.to_single_token(" her")
        torch.testing.assert_close(her.pattern[:, b, :, 0], full[:, b, :, p], atol=0, rtol=0)
        torch.testing.assert_close(
            before.pattern[:, b, :, 0], full[[0, 1]][:, b][:, [3, 1], p - 1], atol=0, rtol=0
        )
    assert before.layers == (0, 1) and before.heads == (3, 1)
    torch.testing.assert_close(before.pattern_at(1), full[1][:, [3, 1]].gather(
        2, (pos - 1)[:, None, :, None].expand(-1, 2, 1, full.shape[-1])), atol=0, rtol=0)


def test_query_rows_every_occurrence_pads_empty_slots_with_zeros(model):
    res = tp.run(model, HER_PROMPTS, tp.Attention(),
                 tp.Attention(positions=tp.Target(" her", occurrence="all"), name="her"), batch_size=2)
    her, full = res.her, res.attention.pattern
    assert her.positions_mask.sum(1).tolist() == [2, 1, 1, 1]  # prompt 0 says " her" twice
    for b in range(len(HER_PROMPTS)):
        for k in range(her.positions.shape[1]):
            if her.positions_mask[b, k]:
                torch.testing.assert_close(her.pattern[:, b, :, k], full[:, b, :, int(her.positions[b, k])],
                                           atol=0, rtol=0)
            else:
                assert her.positions[b, k] == -1
                assert her.pattern[:, b, :, k].abs().max() == 0


def test_stored_dtype_and_heads_copy_only_what_was_asked(model):
    res = tp.run(model, HER_PROMPTS, tp.Attention(), tp.Attention(heads=[2], name="h2"),
                 batch_size=4, dtype=torch.float16)
    assert res.attention.pattern.dtype == torch.float16
    res32 = tp.run(model, HER_PROMPTS, tp.Attention(), batch_size=4)
    torch.testing.assert_close(res.attention.pattern, res32.attention.pattern.half(), atol=0, rtol=0)
    torch.testing.assert_close(res.h2.pattern, res32.attention.pattern[:, :, [2]].half(), atol=0, rtol=0)


def test_query_rows_display_and_tensors(model):
    res = tp.run(model, HER_PROMPTS[:2], tp.Attention(positions=tp.Target(" her")), batch_size=2)
    att = res.attention
    assert set(att.tensors()) == {"pattern", "positions", "positions_mask"}
    html = att.to_html()
    assert "attention from" in html and "position" in html
    assert "positions=(2, 1)" in repr(att)


def test_bad_attention_positions_fail_early():
    with pytest.raises(tp.TLProbesError, match="nowhere"):
        tp.Attention(positions="nowhere")
