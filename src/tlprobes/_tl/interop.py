"""TransformerLens ``ActivationCache`` in, tlprobes captures out: code that already calls
``run_with_cache`` gets every analyzer and view without rewriting its capture.

    >>> import tlprobes as tp
    >>> model = tp.load_model()
    >>> tokens = model.to_tokens(["Mary saw her brother.", "John gave her a book."])
    >>> logits, cache = model.run_with_cache(tokens)
    >>> result = tp.from_cache(cache, tokens)          # mask inferred from the padding
    >>> result.residual.resid.shape[0] == model.cfg.n_layers + 1
    True
    >>> mask = result.residual.mask                   # [batch, pos], False on padding
    >>> import numpy as np
    >>> a, b = tp.path_length(cache, mask=mask), tp.path_length(result.residual)
    >>> bool(np.array_equal(a.total, b.total, equal_nan=True))
    True

The padding mask is the ``mask`` you pass (``[batch, pos]``, True/1 on real tokens), or else
TransformerLens's own ``get_attention_mask`` on ``tokens`` (trailing pads for right padding, leading
ones for left, a BOS that shares the pad id kept), or else every position counts as real. A cache
does not keep its tokens, so an analyzer given a bare cache of a padded batch needs ``mask=``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._errors import InputError, choices
from .._result import Inputs, Result
from .adapter import Meta, adapter_for

__all__ = ["from_cache", "is_activation_cache", "capture_from_cache"]

_ATTR_TO_CAPTURE = {"resid": "residual", "attn_out": "components", "mlp_out": "components",
                    "pattern": "attention"}


def is_activation_cache(obj: Any) -> bool:
    """True for a TransformerLens ``ActivationCache`` (any TL line), without importing TL."""
    return any(c.__name__ == "ActivationCache" for c in type(obj).__mro__) and hasattr(
        obj, "cache_dict"
    )


def _get(cache: Any, name: str) -> Tensor | None:
    d = cache.cache_dict
    return d[name].detach().cpu() if name in d else None


def _stack(cache: Any, names: list[str]) -> Tensor | None:
    parts = [_get(cache, n) for n in names]
    if any(p is None for p in parts):
        return None
    return torch.stack(parts)  # type: ignore[arg-type]


def _tl_attention_mask(model: Any, tokens: Tensor) -> Tensor | None:
    tok = getattr(model, "tokenizer", None)
    if tok is None or getattr(tok, "pad_token_id", None) is None:
        return None
    try:  # TL 4
        from transformer_lens.utilities import get_attention_mask
    except ImportError:  # TL 2 / 3
        from transformer_lens.utils import get_attention_mask
    prepend_bos = bool(getattr(model.cfg, "default_prepend_bos", True))
    return get_attention_mask(tok, tokens, prepend_bos).bool()


def _infer_mask(cache: Any, model: Any, tokens: Tensor | None, batch: int, seq: int) -> Tensor:
    if tokens is not None and model is not None:
        m = _tl_attention_mask(model, tokens)
        if m is not None:
            return m.cpu()
    return torch.ones(batch, seq, dtype=torch.bool)


def from_cache(
    cache: Any,
    tokens: Tensor | None = None,
    *,
    mask: Any = None,
    model: Any = None,
    prompts: list[str] | None = None,
) -> Result:
    """A :class:`~tlprobes.Result` built from a TransformerLens ``ActivationCache``.

    It holds ``residual`` (x_0..x_L from ``hook_resid_pre`` of every block and the last
    ``hook_resid_post``; ``resid_mid`` too when cached), ``components`` (``hook_attn_out`` /
    ``hook_mlp_out`` of every block) and ``attention`` (``attn.hook_pattern``), each when the cache
    has every layer of it, at all positions, with the padding mask attached.

    Args:
        cache: from ``model.run_with_cache(...)`` (batched; ``remove_batch_dim=False``).
        tokens: the ``[batch, pos]`` token ids that went in (token strings, mask inference).
        mask: ``[batch, pos]`` bool/0-1, True on real tokens; inferred when omitted (see the
            module docstring).
        model: the model (default ``cache.model``); it names the result and decodes tokens.
        prompts: the prompt strings, kept in ``result.inputs.prompts``.
    """
    if not is_activation_cache(cache):
        raise InputError(
            f"from_cache takes a transformer_lens ActivationCache, got {type(cache).__name__}"
        )
    if not getattr(cache, "has_batch_dim", True):
        raise InputError("this cache has no batch dimension (remove_batch_dim=True); re-run "
                         "run_with_cache without remove_batch_dim")
    model = model if model is not None else getattr(cache, "model", None)
    adapter = adapter_for(model) if model is not None else None
    n_layers = int(model.cfg.n_layers) if model is not None else None
    keys = list(cache.cache_dict)
    if n_layers is None:
        found = [int(k.split(".")[1]) for k in keys
                 if k.startswith("blocks.") and "hook_resid_pre" in k]
        n_layers = max(found) + 1 if found else 0
    L = range(n_layers)
    resid = None
    if n_layers:
        resid = _stack(cache, [f"blocks.{l}.hook_resid_pre" for l in L] +
                       [f"blocks.{n_layers - 1}.hook_resid_post"])
    resid_mid = _stack(cache, [f"blocks.{l}.hook_resid_mid" for l in L]) if n_layers else None
    attn_out = _stack(cache, [f"blocks.{l}.hook_attn_out" for l in L]) if n_layers else None
    mlp_out = _stack(cache, [f"blocks.{l}.hook_mlp_out" for l in L]) if n_layers else None
    pattern = _stack(cache, [f"blocks.{l}.attn.hook_pattern" for l in L]) if n_layers else None
    first = next((t for t in (resid, attn_out, mlp_out) if t is not None), None)
    if first is None and pattern is None:
        raise InputError(
            "the cache holds none of hook_resid_pre/post, hook_attn_out, hook_mlp_out or "
            f"attn.hook_pattern for every layer; its keys: {choices(keys[:12])}"
        )
    batch, seq = (first.shape[1], first.shape[2]) if first is not None else (
        pattern.shape[1], pattern.shape[-1])  # type: ignore[union-attr]
    if tokens is not None:
        tokens = torch.as_tensor(tokens).detach().cpu()
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tuple(tokens.shape) != (batch, seq):
            raise InputError(f"tokens have shape {tuple(tokens.shape)}; the cache has "
                             f"[batch, pos] = {(batch, seq)}")
    if mask is None:
        am = _infer_mask(cache, model, tokens, batch, seq)
    else:
        am = torch.as_tensor(mask).detach().cpu()
        if am.ndim == 1:
            am = am[None]
        binary = torch.isin(am.float(), torch.tensor([0.0, 1.0])).all()
        if tuple(am.shape) != (batch, seq) or not binary:
            raise InputError(f"mask must be bool or 0/1 of shape [batch, pos] = {(batch, seq)}; "
                             f"got {tuple(am.shape)}")
        am = am.bool()
    decode = adapter.str_tokens if adapter is not None and adapter.hf_tokenizer is not None else None
    inputs = Inputs(
        tokens=tokens if tokens is not None else torch.zeros(batch, seq, dtype=torch.long),
        attention_mask=am,
        prompts=prompts,
        decode=decode if tokens is not None else None,
    )
    meta = adapter.meta if adapter is not None else Meta(
        model_name="unknown (ActivationCache)", model_kind="unknown", tl_version="unknown",
        mode="unknown", dtype=str(first.dtype if first is not None else "unknown"), device="cpu",
        n_layers=n_layers, d_model=int(first.shape[-1]) if first is not None else 0,
        n_heads=int(pattern.shape[2]) if pattern is not None else 0, d_vocab=0, n_ctx=seq,
        normalization="unknown",
    )
    from ..capture._positions import resolve_positions
    from ..capture.attention import AttentionCapture
    from ..capture.components import ComponentsCapture
    from ..capture.residual import ResidualCapture

    positions, valid = resolve_positions("all", inputs.tokens, am)
    common = dict(positions=positions, mask=valid, inputs=inputs, meta=meta)
    captures: dict[str, Any] = {}
    if resid is not None:
        captures["residual"] = ResidualCapture(**common, resid=resid, resid_mid=resid_mid,
                                               final_state="raw")
    if attn_out is not None or mlp_out is not None:
        captures["components"] = ComponentsCapture(**common, attn_out=attn_out, mlp_out=mlp_out,
                                                   layers=tuple(L))
    if pattern is not None:
        captures["attention"] = AttentionCapture(layer_patterns=tuple(pattern), layers=tuple(L),
                                                 heads=tuple(range(pattern.shape[2])),
                                                 inputs=inputs, meta=meta)
    return Result(captures, inputs, meta, {"source": "ActivationCache"})


def capture_from_cache(cache: Any, attr: str, mask: Any = None) -> Any:
    """The capture an analyzer reading ``attr`` (``resid``, ``attn_out``...) needs, from a cache."""
    name = _ATTR_TO_CAPTURE.get(attr, "residual")
    result = from_cache(cache, mask=mask)
    if name not in result:
        raise InputError(
            f"this analysis reads {attr!r}, but the cache lacks it for some layer; run "
            "run_with_cache without a names_filter, or one that keeps every layer's "
            f"hook_resid_pre, hook_resid_post, hook_attn_out and hook_mlp_out (it holds "
            f"{choices(list(result))})"
        )
    return result[name]
