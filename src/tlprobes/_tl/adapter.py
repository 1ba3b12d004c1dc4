"""The one place that knows TransformerLens.

An :class:`Adapter` wraps a ``HookedTransformer`` (TL 2.x/3.x) or a ``TransformerBridge`` (TL 3.x/4.x),
with or without compatibility mode, and answers what the rest of tlprobes asks of a model: which
HookPoint carries a canonical *site* at a layer, the unembedding (``W_U``, ``b_U``), the model's own
readout for the logit lens (:meth:`Adapter.readout`: its final norm, unembedding and final-logit
soft-cap, called without firing hooks), tokenisation, and the facts every result records
(:class:`Meta`)::

    >>> adapter = adapter_for(model)                          # doctest: +SKIP
    >>> adapter.hook_point("resid_post", 3)                   # doctest: +SKIP
    >>> adapter.meta.mode                                     # doctest: +SKIP
    'raw'
    >>> logits = adapter.readout(x_L)  # the model's logits   # doctest: +SKIP

Hook names are resolved once per model and cached (the bridge's ``hook_dict`` is slow on TL 3.9).
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .._errors import InputError, LayerError, ModelError, SiteError, check_index, choices
from . import tokens
from .hooks import ModuleOutputHook
from .version import tl_version

__all__ = [
    "Adapter",
    "Meta",
    "adapter_for",
    "check_site",
    "is_tl_model",
    "model_name",
    "is_hook_name",
    "SITES",
    "LAYER_SITES",
    "UNSUPPORTED_ARCHITECTURES",
]

#: HF ``model_type`` -> (dtypes it fails in, or ``None`` for all; why tlprobes refuses it):
#: TransformerLens 4.3's bridge cannot run it, or its numbers differ from Hugging Face's before
#: tlprobes is involved. Found by ``tests/test_families.py``; the README's "Tested model families"
#: table lists them.
UNSUPPORTED_ARCHITECTURES: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "olmo": (("float16", "bfloat16"), "TL 4.3's bridge attention for OLMo multiplies float32 "
             "attention weights with float16/bfloat16 values and raises inside TL (RuntimeError: "
             "expected m1 and m2 to have the same dtype); float32 is supported"),
    "olmo2": (("float16", "bfloat16"), "TL 4.3's bridge attention for OLMo 2 multiplies float32 "
              "attention weights with float16/bfloat16 values and raises inside TL (RuntimeError: "
              "expected m1 and m2 to have the same dtype); float32 is supported"),
    "olmo3": (("float16", "bfloat16"), "TL 4.3's bridge attention for OLMo 3 multiplies float32 "
              "attention weights with float16/bfloat16 values and raises inside TL (RuntimeError: "
              "expected m1 and m2 to have the same dtype); float32 is supported"),
    "codegen": (None, "TL 4.3's CodeGen attention bridge reads CodeGenAttention.embed_positions, "
                "which transformers 5 no longer has (AttributeError inside TL on every forward "
                "pass)"),
    "openai-gpt": (None, "TL 4.3's bridge never fires the last block's hook_resid_post for GPT-1 "
                   "(its own run_with_cache lacks it), so the final residual state cannot be "
                   "captured"),
}

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
    "z": "blocks.{l}.attn.hook_z",
    "ln_final_scale": "ln_final.hook_scale",
    "logits": "unembed.hook_out",
}
SITES: tuple[str, ...] = tuple(_SITE_NAMES)
LAYER_SITES: frozenset[str] = frozenset(s for s, n in _SITE_NAMES.items() if "{l}" in n)


def is_hook_name(site: str) -> bool:
    """Whether ``site`` is spelled as a TL hook name (``"blocks.0.mlp.hook_post"``, ``"hook_embed"``)
    rather than a canonical site; TL's hook-name syntax is known here alone.

    >>> is_hook_name("blocks.0.mlp.hook_post"), is_hook_name("resid_mid")
    (True, False)
    """
    return "." in site or site.startswith("hook_")


def check_site(site: Any) -> str:
    """``site`` if it is a canonical site or spelled as a TL hook name, else :class:`SiteError`.

    Needs no model: the hook name itself is checked against the model at attach time.

    >>> check_site("attn_out")
    'attn_out'
    """
    if not isinstance(site, str) or not site:
        raise SiteError(f"site must be a non-empty str, got {site!r}; valid: {choices(SITES)}")
    if site not in SITES and not is_hook_name(site):
        raise SiteError(f"unknown site {site!r}; valid sites: {choices(SITES)}, or a TL hook name")
    return site


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


def is_tl_model(obj: object) -> bool:
    """Whether ``obj`` is a TransformerLens model (a HookedTransformer or a TransformerBridge)."""
    return _is_bridge(obj) or _is_hooked(obj)


def model_name(model: Any, fallback: str = "model") -> str:
    """The name a model records (``cfg.model_name``), without building an adapter."""
    return str(getattr(getattr(model, "cfg", None), "model_name", None) or fallback)


def _is_bridge(model: object) -> bool:
    return hasattr(model, "adapter") and hasattr(model, "original_model")


def _is_hooked(model: object) -> bool:
    return isinstance(model, torch.nn.Module) and hasattr(model, "hook_dict") and hasattr(model, "cfg")


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
        if self.is_bridge:
            _refuse_unsupported(model)
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
            tl_version=tl_version(),
            mode=mode,
            dtype=str(param.dtype).replace("torch.", "") if param is not None else "unknown",
            device=str(execution_device(model) or "cpu"),
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
        return check_index(layer, n, what=what, of=f" for {self.meta.model_name}")

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

    def site_layers(self, site: str, layers: Any = None) -> tuple[int | None, ...]:
        """The layers ``site`` is read at: validated block indices for a block site, ``(None,)``
        for a global site or a TL hook name (checked against the model now)."""
        if site in LAYER_SITES:
            return self.layers(layers)
        if site not in SITES:
            self.raw_hook_point(site)  # validate the name now
        return (None,)

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
        if site not in _SITE_NAMES and is_hook_name(site):  # a TL hook name
            point = self._cache[key] = self.raw_hook_point(site)
            return point
        name = self.hook_name(site, layer)
        point: Any
        if name in self._hook_dict:
            point = self._hook_dict[name]
        elif site == "logits" and hasattr(self.model, "unembed"):
            point = ModuleOutputHook(self.model.unembed, "unembed")  # TL 2.18 has no unembed HookPoint
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

    def release_patterns(self, layers: tuple[int, ...], refs: dict[int, Tensor]) -> None:
        """Drop the model's own reference to the patterns a capture now owns (``refs[i]`` is the
        pattern of ``layers[i]``).

        TL 4.3's attention bridges keep the last pass's pattern (``self._pattern``; nothing in TL
        reads it back). Only a reference to exactly the tensor the hook saw is released; anything
        else the model holds is left alone.
        """
        for i, l in enumerate(layers):
            name = self.hook_name("pattern", l).rsplit(".", 1)[0]
            try:
                module = self.model.get_submodule(name)
            except (AttributeError, TypeError):
                continue
            if module.__dict__.get("_pattern") is refs[i]:
                module._pattern = None

    # ------------------------------------------------------------------ weights
    @property
    def unembed_weight(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding matrix ``W_U`` (the model's own tensor; detach before use; loaded for
        the read when accelerate offloaded the unembedding)."""
        W = self.model.W_U
        if W.device.type == "meta":  # the unembedding is offloaded (accelerate device_map): load it
            W = _materialized(self.model.unembed, lambda: self.model.W_U)
        return W

    @property
    def unembed_bias(self) -> Float[Tensor, " d_vocab"]:
        """The unembedding bias ``b_U`` (zeros when the model has none)."""
        b = getattr(self.model, "b_U", None)
        if b is not None and b.device.type == "meta":
            b = _materialized(self.model.unembed, lambda: self.model.b_U)
        if b is None:
            W_U = self.unembed_weight
            return torch.zeros(self.d_vocab, dtype=W_U.dtype, device=W_U.device)
        return b

    @property
    def embed_weight(self) -> Float[Tensor, "d_vocab d_model"]:
        """The token embedding matrix ``W_E`` (the model's own tensor; detach before use).

        >>> adapter_for(tp.load_model()).embed_weight.shape
        torch.Size([1351, 128])
        """
        return self.model.W_E

    def attn_out_weight(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        """``W_O`` of block ``layer``, ``[head, d_head, d_model]``: one slice per *query* head
        (grouped-query attention needs nothing special: ``hook_z`` has one row per query head)."""
        return self.model.blocks[self.layer(layer)].attn.W_O

    def attn_out_bias(self, layer: int) -> Float[Tensor, " d_model"] | None:
        """``b_O`` of block ``layer`` (``None`` when the model has none)."""
        return getattr(self.model.blocks[self.layer(layer)].attn, "b_O", None)

    # ------------------------------------------------------------------ readout
    def _final_modules(self) -> tuple[Any, Any]:
        """The model's own final norm and unembedding modules, called without firing any hook.

        Bridge: the HF modules the bridge wraps (``original_component``): the bridge's own forward
        calls exactly these, and calling them directly fires no TL hook (neither ours nor the
        user's). HookedTransformer: hook-free clones of TL's own ``ln_final`` / ``unembed`` (see
        :func:`_hookless`): TL's module code on the model's own parameters, with fresh HookPoints.
        """
        key = (id(getattr(self.model, "ln_final", None)), id(getattr(self.model, "unembed", None)))
        cached = self._cache.get(("__final__", None))
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        self.require_readout()
        ln = getattr(self.model, "ln_final", None)
        un = self.model.unembed
        if self.is_bridge:
            ln = None if ln is None else getattr(ln, "original_component", None)
            un = un.original_component
            if un is None:
                raise ModelError(f"{self.meta.model_name}: the bridge's unembed wraps no module")
        else:
            ln = None if ln is None else _hookless(ln)
            un = _hookless(un)
        self._cache[("__final__", None)] = (key, ln, un)
        return ln, un

    def require_readout(self) -> None:
        """Refuse models whose readout is not ``ln_final -> unembed`` with trained weights."""
        reason = untrained_head(self.model) if self.is_bridge else None
        if reason:
            raise ModelError(reason)
        mounted = [n for n in _READOUT_TRANSFORMS if n in dict(self.model.named_children())]
        if mounted:
            raise ModelError(
                f"{self.meta.model_name} reads its residual stream through {choices(mounted)} "
                "before the unembedding (an encoder's prediction head), so ln_final -> unembed is "
                "not the model's readout and tlprobes gives no logit lens for it; residual "
                "captures still work"
            )

    @staticmethod
    def _as_input(module: Any, x: Tensor) -> Tensor:
        """``x`` on the module's device and in its dtype (what the model's forward hands it)."""
        p = next(iter(module.parameters()), None) if module is not None else None
        return x if p is None else x.to(device=execution_device(module), dtype=p.dtype)

    def final_norm(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """The model's own final normalisation applied to ``x`` (fresh statistics, no hook fires).

        Calls the model's module itself (the HF module on a bridge, TL's module code on a
        HookedTransformer), so every flag of the model is honoured (``(1 + w)`` offset RMSNorm,
        biases, eps) and float16/bfloat16 statistics are computed in float32 as the model does.
        At the last layer, ``readout(x)`` equals the model's logits (tested per family).
        """
        ln, _ = self._final_modules()
        if ln is None:  # the model has no final norm
            return x
        shape = x.shape
        y = ln(self._as_input(ln, x).reshape(-1, 1, shape[-1]))  # modules expect [b, p, d]
        return y.reshape(shape)

    def apply_unembed(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_vocab"]:
        """The model's own unembedding module (``W_U``, ``b_U``) applied to ``x``; no hook fires.

        No final-logit transform: :meth:`readout` adds it.
        """
        _, un = self._final_modules()
        shape = x.shape
        y = un(self._as_input(un, x).reshape(-1, 1, shape[-1]))
        return y.reshape(*shape[:-1], y.shape[-1])

    #: TL's names for the two modules (``model.ln_final``, ``model.unembed``), kept on the adapter
    #: so that a check can set the adapter beside the model it mirrors, as the capture oracle
    #: tests do. The package itself calls :meth:`final_norm` / :meth:`apply_unembed`.
    ln_final = final_norm
    unembed = apply_unembed

    def output_transform(
        self, logits: Float[Tensor, "*batch d_vocab"]
    ) -> Float[Tensor, "*batch d_vocab"]:
        """The model's transform after the unembedding (Gemma 2's final-logit soft-cap, ...).

        TL 4.3's bridge declares it per architecture (``adapter.apply_output_logits_transform``:
        soft-cap, Cohere/Granite logit scales); otherwise TL's ``cfg.output_logits_soft_cap`` or
        HF's ``final_logit_softcapping``, applied by TL's own ``apply_softcap`` where it exists.
        """
        arch = getattr(self.model, "adapter", None) if self.is_bridge else None
        transform = getattr(arch, "apply_output_logits_transform", None)
        if callable(transform):
            return transform(logits)
        cap = getattr(self.model.cfg, "output_logits_soft_cap", None)
        if not (cap is not None and float(cap) > 0) and self.is_bridge:
            hf_cfg = getattr(getattr(self.model, "original_model", None), "config", None)
            text_cfg = getattr(hf_cfg, "get_text_config", lambda: hf_cfg)()
            cap = getattr(text_cfg, "final_logit_softcapping", None)
        if cap is None or float(cap) <= 0:
            return logits
        try:
            from transformer_lens.utilities.activation_functions import apply_softcap
        except ImportError:  # TL 2.18: HookedTransformer.forward inlines the same expression
            return float(cap) * torch.tanh(logits / float(cap))
        return apply_softcap(logits, float(cap))

    def readout(
        self, x: Float[Tensor, "*batch d_model"], *, apply_ln: bool = True
    ) -> Float[Tensor, "*batch d_vocab"]:
        """Logits the model would produce from residual state ``x``: final norm, unembed, soft-cap.

        Every piece is the model's own module or declared transform, called without firing hooks;
        at the last layer this is the model's own output (within its rounding). ``apply_ln=False``
        skips the final norm (the course's variant). Raises :class:`ModelError` for a model whose
        head was not trained (an encoder booted with a random MLM head) or whose readout is not
        ``ln_final -> unembed``.

        >>> logits = adapter_for(model).readout(resid_post_last)   # doctest: +SKIP
        """
        h = self.final_norm(x) if apply_ln else x
        return self.output_transform(self.apply_unembed(h))

    # ------------------------------------------------------------------ forward
    def forward_keywords(self) -> list[str]:
        """The keywords the model's ``forward`` names (``**kwargs`` excluded)."""
        import inspect

        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - an unintrospectable forward
            return []
        return [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    # ------------------------------------------------------------------ tokens
    @property
    def hf_tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer, or ``None``."""
        return getattr(self.model, "tokenizer", None)

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id, or ``None`` (no tokenizer, or no BOS token)."""
        bos = getattr(self.hf_tokenizer, "bos_token_id", None)
        return None if bos is None else int(bos)

    def tokenizer_facts(self, pieces: tuple[int, ...] | None = None) -> dict[str, Any]:
        """What a report says about the tokenizer: its class, its size and how ``pieces`` (the ids
        of a word inside running text) are spelled.

        >>> adapter_for(tp.load_model()).tokenizer_facts((318, 87))   # doctest: +ELLIPSIS
        {'tokenizer': '...', 'vocabulary': 1351, 'a word inside text': "'Ġg' + 'w'"}
        """
        tok = self.hf_tokenizer
        if tok is None:
            return {"tokenizer": "none"}
        out: dict[str, Any] = {"tokenizer": type(tok).__name__, "vocabulary": len(tok)}
        if pieces:
            out["a word inside text"] = " + ".join(
                repr(t) for t in tok.convert_ids_to_tokens(list(pieces))
            )
        return out

    def require_tokenizer(self, why: str) -> Any:
        tok = self.hf_tokenizer
        if tok is None:
            raise InputError(
                f"{why} needs a tokenizer, but {self.meta.model_name} has none; pass token ids "
                "(a LongTensor [batch, pos]) instead of strings, or attach a tokenizer to the model"
            )
        return tok

    def encode(self, text: str, *, prepend_bos: bool | None = None) -> list[int]:
        """Token ids of one prompt, as the model's own ``to_tokens`` makes them."""
        return tokens.encode(self, text, prepend_bos=prepend_bos)

    def encode_word(self, word: str) -> list[int]:
        """Ids of a word *inside* a text (no BOS): ``" her"`` keeps its leading space."""
        return self.encode(word, prepend_bos=False)

    def pad_token_id(self) -> int:
        tok = self.hf_tokenizer
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            val = getattr(tok, attr, None) if tok is not None else None
            if val is not None:
                return int(val)
        return 0

    def str_tokens(self, ids: list[int]) -> list[str]:
        tok = self.hf_tokenizer
        if tok is None:
            return [str(i) for i in ids]
        return [tok.decode([i]) for i in ids]


def execution_device(module: torch.nn.Module) -> torch.device | None:
    """Where ``module`` runs: its first parameter's device, or, when accelerate offloaded it to the
    CPU or disk (a ``device_map`` with ``"cpu"``/``"disk"``: its parameters sit on the meta device),
    the execution device of accelerate's hook on it (``None`` for a module without parameters).

    Example::

        >>> execution_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    p = next(iter(module.parameters()), None)
    if p is None:
        return None
    if p.device.type != "meta":
        return p.device
    for m in module.modules():  # the module itself first, then its children in order
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):  # accelerate's SequentialHook holds several
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return torch.device("cpu")


def _materialized(module: Any, read: Any) -> Tensor:
    """``read()`` while accelerate has loaded ``module``'s offloaded weights (a detached copy)."""
    from accelerate.utils import align_module_device

    target = getattr(module, "original_component", None) or module
    with align_module_device(target):
        return read().detach().clone()


def _refuse_unsupported(model: Any) -> None:
    """Raise :class:`ModelError` for an architecture (and dtype) TL cannot run, with the reason."""
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    model_type = str(getattr(hf_cfg, "model_type", ""))
    if model_type not in UNSUPPORTED_ARCHITECTURES:
        return
    dtypes, reason = UNSUPPORTED_ARCHITECTURES[model_type]
    param = next(iter(model.parameters()), None)
    dtype = str(param.dtype).replace("torch.", "") if param is not None else "float32"
    if dtypes is None or dtype in dtypes:
        raise ModelError(
            f"architecture {model_type!r} in {dtype} is not supported by tlprobes on "
            f"TransformerLens {tl_version()}: {reason}. See the README's 'Tested model families'"
        )


#: Bridge components that sit between ``ln_final`` and ``unembed`` on an encoder's readout (TL 4.3
#: refuses its own logit lens for these too).
_READOUT_TRANSFORMS = ("mlm_head", "prediction_head", "project_out", "hc_head", "sigma_map")


def _hookless(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow clone of a TL module whose HookPoints are fresh: TL's own forward, no hook fires.

    The clone shares the module's parameters, buffers and ``cfg`` (so it follows in-place weight
    edits) and has no torch hooks; every ``HookPoint`` child is replaced by a new, empty one, so
    neither tlprobes' hooks nor the user's fire and the user's hooks are never touched. This runs
    TL's module code (``LayerNorm``/``RMSNorm``/``LNPre``/``RMSPre``/``Unembed``.forward, with
    their float32 upcast) rather than a formula of ours.
    """
    import copy
    from collections import OrderedDict

    from transformer_lens.hook_points import HookPoint

    clone = copy.copy(module)
    clone._modules = OrderedDict(
        (name, _fresh(child, HookPoint)) for name, child in module._modules.items()
    )
    for attr in list(vars(clone)):
        if attr.endswith(("_hooks", "_hooks_with_kwargs", "_always_called")):
            if isinstance(getattr(clone, attr), dict):
                setattr(clone, attr, OrderedDict())
    return clone


def _fresh(child: Any, hook_point: type) -> Any:
    if child is None:
        return None
    return hook_point() if isinstance(child, hook_point) else _hookless(child)


def untrained_head(model: Any) -> str | None:
    """Why ``model``'s LM head holds random weights, or ``None`` when it was loaded.

    A checkpoint saved as a headless base model (``BertModel``, a sentence-transformers dir) and
    booted by the bridge as ``...ForMaskedLM``/``...ForCausalLM`` gets its head initialised at
    random by ``transformers``. Heads tied to the (trained) input embedding are fine.
    """
    hf = getattr(model, "original_model", None)
    cfg = getattr(hf, "config", None)
    archs = list(getattr(cfg, "architectures", None) or [])
    if hf is None or not archs or type(hf).__name__ in archs:
        return None
    base = getattr(hf, "base_model", None)
    if base is None or base is hf or type(base).__name__ not in archs:
        return None
    trained = {p.data_ptr() for p in base.parameters()}
    head = [n for n, p in hf.named_parameters() if not n.startswith(hf.base_model_prefix + ".")
            and p.data_ptr() not in trained]
    if not head:
        return None
    mods = sorted({n.split(".")[0] for n in head})
    return (
        f"{getattr(cfg, 'name_or_path', None) or type(hf).__name__} was saved as {choices(archs)} "
        f"(no LM head); the bridge booted {type(hf).__name__}, whose head {choices(mods)} "
        f"({len(head)} tensors, e.g. {head[0]!r}) was initialised with random weights, so a logit "
        "lens would rank tokens at random. Residual captures still work; load a checkpoint that "
        "ships a trained LM head for the lens"
    )


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
