"""The fastest attention kernel for runs that need no attention pattern.

TL 4.3's bridge computes GPT-2-style attention itself (``JointQKVAttentionBridge._reconstruct_attention``:
``matmul``, mask, ``softmax``, ``matmul``), so a run with ``tp.Residual()`` or ``tp.Steps()`` pays
for the full ``[batch, head, dest, src]`` pattern even though nobody reads it. While a session is
attached and none of its probes asks for ``pattern`` or ``attn_scores``, each such attention block
computes the same function with :func:`torch.nn.functional.scaled_dot_product_attention` (torch
picks flash / memory-efficient / math by itself), from the bridge's own Q/K/V (their hooks still
fire), the bridge's own KV-cache update and output projection (its hooks too).

A block falls back to the bridge's own eager path, call by call, whenever its result could differ:
a hook on ``hook_attn_scores`` or ``hook_pattern`` (anyone's, added at any time), training mode
(dropout), ``output_attentions``, compatibility mode (``-inf`` masks), float32 upcasting, per-head
results (``use_attn_result``), or a mask the bridge would interpret itself (not HF's 4D mask).
Nothing else of the model is touched, and :meth:`Switch.restore` removes exactly what was set.

    >>> sw = use_fastest(model, needs_pattern=False)   # doctest: +SKIP
    >>> sw.name                                       # doctest: +SKIP
    'sdpa'
    >>> sw.restore()                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Switch", "use_fastest", "PATTERN_SITES"]

PATTERN_SITES = frozenset({"pattern", "attn_scores"})
_ATTR = "_reconstruct_attention"


class Switch:
    """What :func:`use_fastest` changed: ``name`` for the result's records, ``restore()`` to undo.

    ``name`` counts what really ran: ``"sdpa"`` when every attention call of the switched blocks
    went through SDPA, ``"eager"`` when none did (or nothing was switched), otherwise
    ``"sdpa+eager (k of n calls eager)"``.
    """

    def __init__(self, modules: list[Any], n_blocks: int = 0):
        self._modules = modules
        self.n_blocks = n_blocks
        self.n_switched = len(modules)
        self.calls = {"sdpa": 0, "eager": 0}

    @property
    def name(self) -> str:
        fast, slow = self.calls["sdpa"], self.calls["eager"]
        if self.n_switched == 0 or fast == 0:
            return "eager"
        if slow == 0 and self.n_switched == self.n_blocks:
            return "sdpa"
        return (f"sdpa+eager (SDPA in {self.n_switched} of {self.n_blocks} blocks, "
                f"{slow} of {fast + slow} of their calls eager)")

    def restore(self) -> None:
        modules, self._modules = self._modules, []
        for m in modules:
            fn = m.__dict__.get(_ATTR)
            if isinstance(fn, _Fast) and fn.switch is self:
                del m.__dict__[_ATTR]


class _Fast:
    """The instance-level ``_reconstruct_attention`` of one switched block."""

    def __init__(self, module: Any, switch: Switch):
        self.module = module
        self.switch = switch

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple:
        out = _sdpa_reconstruct(self.module, q, k, v, **kwargs)
        self.switch.calls["eager" if out is None else "sdpa"] += 1
        if out is None:
            return type(self.module)._reconstruct_attention(self.module, q, k, v, **kwargs)
        return out


def _joint_qkv_class() -> type | None:
    try:
        from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
            JointQKVAttentionBridge,
        )
    except Exception:  # noqa: BLE001 - TL 2/3 or a layout without it: nothing to switch
        return None
    return JointQKVAttentionBridge


def use_fastest(model: Any, *, needs_pattern: bool) -> Switch:
    """Switch the model's attention blocks to SDPA when nothing needs their pattern.

    Returns a :class:`Switch` (``"eager"`` when nothing was switched: always so for
    HookedTransformer, whose attention has no other path).
    """
    cls = _joint_qkv_class()
    blocks = getattr(model, "blocks", None)
    attns = [getattr(b, "attn", None) for b in blocks] if isinstance(blocks, Iterable) else []
    switch = Switch([], len(attns))
    if needs_pattern or cls is None:
        return switch
    for m in attns:
        if type(m) is cls and _ATTR not in m.__dict__ and not getattr(m, "compatibility_mode", False):
            m.__dict__[_ATTR] = _Fast(m, switch)
            switch._modules.append(m)
    switch.n_switched = len(switch._modules)
    return switch


def _hooked(point: Any) -> bool:
    return bool(getattr(point, "fwd_hooks", None) or getattr(point, "bwd_hooks", None)
                or point._forward_hooks or point._forward_pre_hooks or point._backward_hooks)


def _eager_needed(self: Any, kwargs: dict[str, Any]) -> bool:
    cfg = self.config
    return bool(
        self.training
        or kwargs.get("output_attentions")
        or self.compatibility_mode
        or getattr(self, "_reorder_and_upcast_attn", False)
        or getattr(cfg, "use_attn_result", False)
        or _hooked(self.hook_pattern)
        or _hooked(self.hook_attn_scores)
    )


def _sdpa_reconstruct(
    self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any
) -> tuple | None:
    """``_reconstruct_attention`` through SDPA; ``None`` where the bridge's eager path must run."""
    if _eager_needed(self, kwargs):
        return None
    mask = kwargs.get("attention_mask")
    cached = kwargs.get("past_key_values") is not None or kwargs.get("layer_past") is not None
    if (mask is not None and mask.ndim != 4) or (mask is None and cached):
        return None  # decided before the KV cache is touched
    cfg = self.config
    n_heads = cfg.n_heads
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    q, k, v, batch, seq, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)
    k, v = self._update_kv_cache(k, v, **kwargs)
    if n_kv != n_heads:
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
    scale = d_head ** (-0.5)
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) and self._layer_idx is not None:
        scale /= float(self._layer_idx + 1)
    kv_len = k.shape[-2]
    is_causal = False
    if mask is None:  # no cache here (see above), so kv_len == seq
        is_causal = bool(self.is_causal) and not getattr(self, "is_cross_attention", False)
    else:
        mask = mask[..., :kv_len]
        if mask.shape[-2] != seq:
            mask = mask[..., -seq:, :]
        if mask.is_floating_point():
            mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    out = self._reshape_attn_output(out, batch, seq, n_heads, d_head)
    return (self._apply_output_projection(out), None)
