"""The family matrix for ``HookedTransformer`` (TL 2.18 and 3.9): configs switching on what TL can.

Each config is a tiny random HookedTransformer (2 layers, d_model 32, the 300-token offline BPE)
with its norm weights randomised: LayerNorm + learned positions (GPT-2), RMSNorm + rotary + gated
MLP + grouped-query attention (Llama), parallel attention/MLP + partial rotary (GPT-J / NeoX),
Gemma 2 style (RMSNorm before and after each sub-layer, attention and final-logit soft-caps; TL
bakes Gemma's ``1 + w`` into the weights), and the folded ``LNPre`` / ``RMSPre`` forms. Checked:

* the lens at the last layer == the model's own log-probs (float32, float16, bfloat16),
* ``Residual`` / ``Components`` / ``Attention`` captures == TL's own ``run_with_cache``,
* a user's hook on ``ln_final`` fires only for the model's forward passes, never for the lens.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from conftest import PROMPTS, _tokenizer

import tlprobes as tp

TL_MAJOR = int(importlib.metadata.version("transformer-lens").split(".")[0])
pytestmark = pytest.mark.skipif(TL_MAJOR > 3, reason="HookedTransformer lines are TL 2.x / 3.x")

BASE = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, device="cpu")

CONFIGS: dict[str, dict] = {
    "ln_standard": dict(act_fn="gelu_new", normalization_type="LN"),
    "rms_rotary_gqa": dict(
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        n_key_value_heads=2,
        final_rms=True,
    ),
    "parallel_rotary": dict(
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=4,
        parallel_attn_mlp=True,
    ),
    "gemma2_softcap": dict(
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        n_key_value_heads=2,
        final_rms=True,
        use_normalization_before_and_after=True,
        output_logits_soft_cap=3.0,
        attn_scores_soft_cap=5.0,
    ),
    "ln_folded": dict(act_fn="gelu_new", normalization_type="LN", fold=True),
    "rms_folded": dict(
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        fold=True,
    ),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MODELS: dict[tuple[str, str], object] = {}


def _model(name: str, dtype: str = "float32"):
    key = (name, dtype)
    if key in _MODELS:
        return _MODELS[key]
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    spec = dict(CONFIGS[name])
    fold = spec.pop("fold", False)
    tok = _tokenizer()
    cfg = HookedTransformerConfig(**BASE, **spec, d_vocab=len(tok), seed=0)
    torch.manual_seed(0)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if ".ln" in pname or pname.startswith("ln_final"):  # not left at 1 / 0
                p.add_(0.3 * torch.randn_like(p))
            elif pname.endswith("b_U") or ".b_" in pname:
                p.add_(0.05 * torch.randn_like(p))
        model.W_U.mul_(20.0)  # logits of several nats: the soft-cap bites
    if fold:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_and_process_state_dict(
            state,
            fold_ln=True,
            center_writing_weights=True,
            center_unembed=True,
            fold_value_biases=True,
        )
    if dtype != "float32":
        model = model.to(DTYPES[dtype])
    model.eval()
    _MODELS[key] = model
    return model


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lens_at_last_layer_is_the_models_logprobs(name, dtype):
    model = _model(name, dtype)
    res = tp.run(
        model, PROMPTS, tp.LogitLens(keep_logprobs=True), batch_size=4, padding_side="left"
    )
    tokens, mask = res.inputs.tokens, res.inputs.attention_mask
    with torch.no_grad():
        own = torch.log_softmax(model(tokens, attention_mask=mask.long()).float(), -1)
    tol = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 1e-1}[dtype]
    lp = res.logit_lens.logprobs[-1]
    for b in range(tokens.shape[0]):
        keep = mask[b]
        torch.testing.assert_close(
            lp[b][keep],
            own[b][keep],
            atol=tol,
            rtol=0,
            msg=lambda m, b=b: f"{name} {dtype} prompt {b}: {m}",
        )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_captures_equal_run_with_cache(name):
    model = _model(name)
    parallel = bool(model.cfg.parallel_attn_mlp)  # no resid_mid in a parallel block
    res = tp.run(
        model,
        PROMPTS,
        tp.Residual(mid=not parallel),
        tp.Components(),
        tp.Attention(),
        batch_size=4,
        padding_side="right",
    )
    tokens, mask = res.inputs.tokens, res.inputs.attention_mask
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, attention_mask=mask.long())
    r, c, a = res.residual, res.components, res.attention
    n = model.cfg.n_layers
    for layer in range(n):
        torch.testing.assert_close(
            r.resid[layer], cache[f"blocks.{layer}.hook_resid_pre"], atol=0, rtol=0
        )
        torch.testing.assert_close(
            c.attn_out[layer], cache[f"blocks.{layer}.hook_attn_out"], atol=0, rtol=0
        )
        torch.testing.assert_close(
            c.mlp_out[layer], cache[f"blocks.{layer}.hook_mlp_out"], atol=0, rtol=0
        )
        torch.testing.assert_close(
            a.pattern[layer], cache[f"blocks.{layer}.attn.hook_pattern"], atol=0, rtol=0
        )
        if not parallel:
            torch.testing.assert_close(
                r.resid_mid[layer], cache[f"blocks.{layer}.hook_resid_mid"], atol=0, rtol=0
            )
    torch.testing.assert_close(r.resid[n], cache[f"blocks.{n - 1}.hook_resid_post"], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["ln_standard", "gemma2_softcap", "rms_folded"])
def test_final_state_is_tls_ln_final_and_no_user_hook_fires(name):
    """``Residual(final_state="ln_f")`` is TL's own ``ln_final`` output; the user's hooks on it fire
    once per forward pass of the model, never for tlprobes' readout."""
    model = _model(name)
    calls = []
    model.ln_final.hook_scale.add_hook(lambda t, hook: calls.append(hook.name))
    try:
        res = tp.run(model, PROMPTS, tp.Residual(final_state="ln_f"), tp.LogitLens(), batch_size=4)
        assert len(calls) == 1  # one batch, one forward pass; none from the lens or the ln_f state
        tokens, mask = res.inputs.tokens, res.inputs.attention_mask
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, attention_mask=mask.long())
            want = model.ln_final(cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
        torch.testing.assert_close(res.residual.resid[-1], want, atol=1e-6, rtol=0)
    finally:
        model.reset_hooks(including_permanent=True)


def test_float16_lens_survives_activations_above_256():
    """A centred residual entry of 400 (its square overflows float16) in a float16
    HookedTransformer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = _tokenizer()
    cfg = HookedTransformerConfig(
        **BASE, act_fn="gelu_new", normalization_type="LN", d_vocab=len(tok), seed=0
    )
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    with torch.no_grad():
        model.ln_final.w.add_(0.3 * torch.randn_like(model.ln_final.w))
        model.ln_final.b.add_(0.3 * torch.randn_like(model.ln_final.b))
        model.W_E[:, 3] += 400.0
        model.W_U.mul_(20.0)
    model = model.to(torch.float16).eval()
    res = tp.run(model, PROMPTS[:2], tp.Residual(), tp.LogitLens(keep_logprobs=True))
    x_L = res.residual.resid[-1].float()
    assert (x_L - x_L.mean(-1, keepdim=True)).abs().max() > 256
    tokens, mask = res.inputs.tokens, res.inputs.attention_mask
    with torch.no_grad():
        own = torch.log_softmax(model(tokens, attention_mask=mask.long()).float(), -1)
    for b in range(2):
        keep = mask[b]
        torch.testing.assert_close(
            res.logit_lens.logprobs[-1, b][keep], own[b][keep], atol=2e-2, rtol=0
        )
