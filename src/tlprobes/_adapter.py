"""The one place that knows TransformerLens.

An :class:`Adapter` wraps a ``HookedTransformer`` (TL 2.x/3.x) or a ``TransformerBridge`` (TL 3.x/4.x),
with or without compatibility mode, and answers what the rest of tlprobes asks of a model: which
HookPoint carries a canonical *site* at a layer, the unembedding (``W_U``, ``b_U``), a faithful final
LayerNorm for the logit lens, tokenisation, and the facts every result records (:class:`Meta`)::

    >>> adapter = adapter_for(model)                          # doctest: +SKIP
    >>> adapter.hook_point("resid_post", 3)                   # doctest: +SKIP
    >>> adapter.meta.mode                                     # doctest: +SKIP
    'raw'

Hook names are resolved once per model and cached (the bridge's ``hook_dict`` is slow on TL 3.9).
"""

from __future__ import annotations

import importlib.metadata
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._errors import InputError, LayerError, ModelError, SiteError, choices

__all__ = ["Adapter", "Meta", "adapter_for", "SITES", "LAYER_SITES"]

#: Canonical sites and the HookedTransformer-style hook name that carries each. ``{l}`` is the layer.
_SITE_NAMES: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "ln_final_scale": "ln_final.hook_scale",
    "logits": "unembed.hook_out",
}
SITES: tuple[str, ...] = tuple(_SITE_NAMES)
LAYER_SITES: frozenset[str] = frozenset(s for s, n in _SITE_NAMES.items() if "{l}" in n)


@dataclass(frozen=True)
class Meta:
    """What every result records about the model that produced it."""

    model_name: str
    model_kind: str  # "HookedTransformer" | "TransformerBridge"
    tl_version: str
    mode: str  # "raw" (HF numerics) | "compat" (HookedTransformer processing: folded LN, centred weights)
    dtype: str
    device: str
    n_layers: int
    d_model: int
    n_heads: int
    d_vocab: int
    n_ctx: int
    normalization: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tl_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkouts
        return "unknown"


def _is_bridge(model: object) -> bool:
    return hasattr(model, "adapter") and hasattr(model, "original_model")


def _is_hooked(model: object) -> bool:
    return isinstance(model, torch.nn.Module) and hasattr(model, "hook_dict") and hasattr(model, "cfg")


class _ModuleOutputHook:
    """A forward hook on a plain ``nn.Module`` that behaves like a HookPoint hook.

    Used for the logits of TL 2.18, whose ``unembed`` has no HookPoint.
    """

    def __init__(self, module: torch.nn.Module, name: str):
        self.module = module
        self.name = name

    def add(self, fn: Any) -> Any:
        def torch_hook(_module: torch.nn.Module, _inputs: Any, output: Tensor) -> None:
            fn(output, hook=self)

        return self.module.register_forward_hook(torch_hook)


class Adapter:
    """Reads one TL model: its kind, version, mode, sites and unembedding.

    Build one with :func:`adapter_for`, which caches it per model.
    """

    def __init__(self, model: Any):
        if not (_is_bridge(model) or _is_hooked(model)):
            raise ModelError(
                f"tlprobes needs a TransformerLens model, got {type(model).__module__}."
                f"{type(model).__qualname__}; valid: transformer_lens.HookedTransformer (TL 2.x/3.x) or "
                "transformer_lens.model_bridge.TransformerBridge (TL 3.x/4.x). Wrap a HF model with "
                "TransformerBridge.boot_transformers(...) or load one with tlprobes.load_model()."
            )
        self.model = model
        self.is_bridge = _is_bridge(model)
        cfg = model.cfg
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.d_model = int(cfg.d_model)
        self.d_vocab = int(cfg.d_vocab)
        self.n_ctx = int(cfg.n_ctx)
        self.normalization = str(getattr(cfg, "normalization_type", None))
        self._hook_dict: dict[str, Any] = dict(model.hook_dict)
        self._cache: dict[tuple[str, int | None], Any] = {}
        if self.is_bridge:
            mode = "compat" if getattr(model, "compatibility_mode", False) else "raw"
        else:
            mode = "compat" if self._hooked_is_processed() else "raw"
        param = next(iter(model.parameters()), None)
        self.meta = Meta(
            model_name=str(getattr(cfg, "model_name", None) or type(model).__name__),
            model_kind="TransformerBridge" if self.is_bridge else "HookedTransformer",
            tl_version=_tl_version(),
            mode=mode,
            dtype=str(param.dtype).replace("torch.", "") if param is not None else "unknown",
            device=str(param.device) if param is not None else "cpu",
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_vocab=self.d_vocab,
            n_ctx=self.n_ctx,
            normalization=self.normalization,
        )

    def _hooked_is_processed(self) -> bool:
        """HookedTransformer weights processed the HT way (fold_ln / centre_writing_weights).

        TL 3 marks folded LayerNorms as ``LNPre``; TL 2.18's ``load_and_process_state_dict`` keeps
        ``LN``, so we also look for centred writing weights (each ``W_E`` row has mean 0), which is
        what changes the residual geometry.
        """
        if self.normalization in ("LNPre", "RMSPre"):
            return True
        W_E = getattr(self.model, "W_E", None)
        if W_E is None:
            return False
        with torch.no_grad():
            return bool(W_E.mean(-1).abs().max() <= 1e-6 * W_E.abs().mean().clamp(min=1e-12) * 10)

    # ------------------------------------------------------------------ sites and hooks
    def layer(self, layer: int, *, n: int | None = None, what: str = "layer") -> int:
        """Validate a layer index (negative counts from the end) and return it non-negative."""
        n = self.n_layers if n is None else n
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise LayerError(f"{what} must be an int, got {layer!r}; valid: 0..{n - 1}")
        if not -n <= layer < n:
            raise LayerError(
                f"{what} {layer} is out of range for {self.meta.model_name} with {n} "
                f"{'blocks' if n == self.n_layers else what + 's'}; valid: 0..{n - 1} "
                "(negative indices count from the end)"
            )
        return layer % n

    def layers(self, layers: Any, *, what: str = "layer") -> tuple[int, ...]:
        """``None`` or ``"all"`` means every block; otherwise validate each index."""
        if layers is None or (isinstance(layers, str) and layers == "all"):
            return tuple(range(self.n_layers))
        if isinstance(layers, str):  # not its characters; bools are refused by layer()
            raise LayerError(f"layers={layers!r} is not valid; valid: 'all', None, an int or a list "
                             f"of ints in 0..{self.n_layers - 1}")
        if isinstance(layers, int):
            layers = [layers]
        return tuple(sorted({self.layer(lay) for lay in layers}))

    def hook_name(self, site: str, layer: int | None = None) -> str:
        """The HookedTransformer-style hook name of ``site`` (at ``layer`` for block sites)."""
        if site not in _SITE_NAMES:
            raise SiteError(f"unknown site {site!r}; valid sites: {choices(SITES)}")
        if site in LAYER_SITES:
            if layer is None:
                raise LayerError(f"site {site!r} needs a layer; valid: 0..{self.n_layers - 1}")
            return _SITE_NAMES[site].format(l=self.layer(layer))
        return _SITE_NAMES[site]

    def hook_point(self, site: str, layer: int | None = None) -> Any:
        """The object to register a hook on for ``site``; resolved once and cached."""
        key = (site, layer)
        if key in self._cache:
            return self._cache[key]
        if site.startswith("@"):  # a raw TL hook name
            point = self._cache[key] = self.raw_hook_point(site[1:])
            return point
        name = self.hook_name(site, layer)
        point: Any
        if name in self._hook_dict:
            point = self._hook_dict[name]
        elif site == "logits" and hasattr(self.model, "unembed"):
            point = _ModuleOutputHook(self.model.unembed, "unembed")  # TL 2.18 has no unembed HookPoint
        elif site == "pos_embed":
            raise SiteError(
                f"site 'pos_embed' does not exist on {self.meta.model_name} (positional embedding "
                f"type {getattr(self.model.cfg, 'positional_embedding_type', '?')!r})"
            )
        else:
            raise SiteError(f"hook {name!r} (site {site!r}) is not in this model's hook_dict")
        if site == "pos_embed" and getattr(self.model.cfg, "positional_embedding_type", "standard") != (
            "standard"
        ):
            raise SiteError(
                "site 'pos_embed' only exists for positional_embedding_type 'standard'; this model "
                f"uses {self.model.cfg.positional_embedding_type!r}"
            )
        self._cache[key] = point
        return point

    def raw_hook_point(self, name: str) -> Any:
        """Any hook of the model by its TL name (``blocks.3.mlp.hook_post``), validated."""
        if name not in self._hook_dict:
            close = [k for k in self._hook_dict if name.split(".")[-1] in k][:8]
            raise SiteError(
                f"unknown hook name {name!r}; canonical sites are {choices(SITES)}"
                + (f"; similar hook names: {choices(close)}" if close else "")
            )
        return self._hook_dict[name]

    # ------------------------------------------------------------------ unembedding
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        b = getattr(self.model, "b_U", None)
        if b is None:
            return torch.zeros(self.d_vocab, dtype=self.W_U.dtype, device=self.W_U.device)
        return b

    def _ln_params(self) -> tuple[Tensor | None, Tensor | None, float]:
        ln = self.model.ln_final
        if self.is_bridge:
            inner = getattr(ln, "original_component", ln)
            w = getattr(inner, "weight", None)
            b = getattr(inner, "bias", None)
            eps = getattr(inner, "eps", None) or getattr(inner, "variance_epsilon", None)
        else:
            w = getattr(ln, "w", None)
            b = getattr(ln, "b", None)
            eps = getattr(ln, "eps", None)
        if eps is None:
            eps = float(getattr(self.model.cfg, "eps", 1e-5))
        return w, b, float(eps)

    def ln_final(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """Apply the model's final normalisation to ``x`` with fresh statistics.

        Computed from the module's own weights, not by calling the module, so no hook fires (neither
        ours nor the user's). Matches the model's logits exactly at the last layer (tested).
        """
        kind = self.normalization
        if kind in ("None", "none"):
            return x
        w, b, eps = self._ln_params()
        w = w.to(x.dtype) if w is not None else None
        b = b.to(x.dtype) if b is not None else None
        if kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        if kind in ("LN", "RMS"):
            if w is not None:
                x = x * w
            if b is not None:
                x = x + b
        return x

    def unembed(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_vocab"]:
        """``x @ W_U + b_U`` without firing hooks (one fused matmul-add)."""
        b = getattr(self.model, "b_U", None)
        return torch.nn.functional.linear(
            x, self.W_U.to(x.dtype).T, None if b is None else b.to(x.dtype)
        )

    # ------------------------------------------------------------------ tokens
    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    def require_tokenizer(self, why: str) -> Any:
        tok = self.tokenizer
        if tok is None:
            raise InputError(
                f"{why} needs a tokenizer, but {self.meta.model_name} has none; pass token ids "
                "(a LongTensor [batch, pos]) instead of strings, or attach a tokenizer to the model"
            )
        return tok

    def encode(self, text: str, *, prepend_bos: bool | None = None) -> list[int]:
        """Token ids of one prompt, as the model's own ``to_tokens`` makes them."""
        self.require_tokenizer(f"the string {text[:40]!r}")
        kwargs: dict[str, Any] = {}
        if prepend_bos is not None:
            kwargs["prepend_bos"] = prepend_bos
        ids = self.model.to_tokens(text, truncate=False, move_to_device=False, **kwargs)
        return [int(i) for i in ids[0].tolist()]

    def encode_word(self, word: str) -> list[int]:
        """Ids of a word *inside* a text (no BOS): ``" her"`` keeps its leading space."""
        return self.encode(word, prepend_bos=False)

    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            val = getattr(tok, attr, None) if tok is not None else None
            if val is not None:
                return int(val)
        return 0

    def str_tokens(self, ids: list[int]) -> list[str]:
        tok = self.tokenizer
        if tok is None:
            return [str(i) for i in ids]
        return [tok.decode([i]) for i in ids]


_ADAPTERS: weakref.WeakKeyDictionary[Any, Adapter] = weakref.WeakKeyDictionary()


def adapter_for(model: Any) -> Adapter:
    """The cached :class:`Adapter` of ``model`` (rebuilt when its mode changed)."""
    if isinstance(model, Adapter):
        return model
    try:
        cached = _ADAPTERS.get(model)
    except TypeError:  # unhashable / not weak-referenceable: cannot be a TL model
        cached = None
    if cached is not None:
        mode = "compat" if getattr(model, "compatibility_mode", False) else "raw"
        if not cached.is_bridge or cached.meta.mode == mode:
            return cached
    adapter = Adapter(model)
    try:
        _ADAPTERS[model] = adapter
    except TypeError:
        pass
    return adapter
