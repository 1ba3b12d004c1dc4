"""Building TransformerLens models: local Hugging Face folders, GGUF conversion, TL model names.

The public loader is :func:`tlprobes.models.load_model`; this module is the TL side of it, and the
one place that probes the installed TransformerLens version::

    >>> from tlprobes._tl.loading import tl_major_version
    >>> tl_major_version() in (2, 3, 4)
    True

* :func:`load_local` builds a model from a local Hugging Face directory (a shipped model's folder,
  a user's folder, a dequantised GGUF folder): on TL 4 (or ``kind="bridge"`` on TL 3)
  ``TransformerBridge.boot_transformers``, on TL 2/3 a ``HookedTransformer`` built offline.
* :func:`convert_gguf` dequantises a ``.gguf`` file through ``transformers`` into a folder.
* :func:`load_by_name` hands any other name to TransformerLens (``"gpt2-xl"``); that needs weights
  on disk or a network.

``compat=True`` applies TransformerLens' weight processing (fold LN, centre writing weights and
unembed, fold value biases): ``enable_compatibility_mode()`` on a bridge, the ``from_pretrained``
defaults on a HookedTransformer. ``compat=False`` keeps the raw weights, so the logits equal
Hugging Face's.

A local directory is checked once at load time (``check=True``): twelve tokens go through the
TransformerLens model and through Hugging Face's own model on the same weights, and their
log-probs must agree within the dtype's tolerance, else :class:`ModelError` names the family, the
size of the gap and the configuration settings TransformerLens did not take over. The check costs
one short forward pass of each model; on a bridge it also loads the HF weights once more before
booting (the copy is freed before the bridge is built, so peak memory stays one model).
Only folders whose config names a causal-LM architecture (``...ForCausalLM``, ``...LMHeadModel``)
are checked: an encoder has no next-token logits. TransformerLens model names are not checked.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .._errors import ModelError, UnknownModelError, choices
from .version import tl_major_version, tl_version

__all__ = [
    "GGUF_MARKER",
    "convert_gguf",
    "load_by_name",
    "load_local",
    "resolve_kind",
    "set_name",
    "tl_major_version",
    "tl_version",
]

_KINDS = ("bridge", "hooked")




def resolve_kind(kind: str | None, tl_major: int | None = None) -> str:
    """The model kind to build: ``kind`` checked against the installed TL line (``None``: its default)."""
    tl_major = tl_major_version() if tl_major is None else tl_major
    if kind is None:
        return "bridge" if tl_major >= 4 else "hooked"
    if kind not in _KINDS:
        raise ModelError(
            f"kind={kind!r} is not a model kind; valid kinds are {choices(_KINDS)} or None"
        )
    if kind == "hooked" and tl_major >= 4:
        raise ModelError(
            f"kind='hooked' needs HookedTransformer, which TransformerLens {tl_major}.x removed; "
            "use kind='bridge' (or None)"
        )
    if kind == "bridge" and tl_major < 3:
        raise ModelError(
            f"kind='bridge' needs TransformerBridge, which TransformerLens {tl_major}.x lacks; "
            "use kind='hooked' (or None)"
        )
    return kind



# ---------------------------------------------------------------------------------------------
# GGUF files
# ---------------------------------------------------------------------------------------------

#: the file a finished GGUF conversion writes last (its presence marks a complete folder)
GGUF_MARKER = "tlprobes_gguf.json"


def convert_gguf(src: Path, out: Path) -> float:
    """Dequantise the GGUF file ``src`` into the HF folder ``out``; returns the seconds it took."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as tf_version

    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        )
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds for GGUF files
        raise ModelError(
            f"transformers {tf_version} could not read the GGUF file {str(src)!r} "
            f"({type(err).__name__}: {_first_line(err)}); it reads the GGUF architectures listed "
            "in "
            "transformers' GGUF documentation (llama, mistral, qwen2, gemma, phi3, ...)"
        ) from err
    # The weights are dequantised float32 tensors now; drop the GGUF "quantisation" marker so
    # that save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _make_portable(out)
    seconds = time.perf_counter() - t0
    (out / GGUF_MARKER).write_text(
        json.dumps(
            {
                "source": str(src.resolve()),
                "size": src.stat().st_size,
                "transformers": tf_version,
                "convert_seconds": round(seconds, 1),
            },
            indent=2,
        )
    )
    return seconds


def _make_portable(out: Path) -> None:
    """Let transformers 4.x (the TL 2.18 line) read a folder written by transformers 5."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tok_path = out / "tokenizer_config.json"
    if tok_path.exists():
        tok_cfg = json.loads(tok_path.read_text())
        backend = tok_cfg.get("tokenizer_class") == "TokenizersBackend"
        if backend and (out / "tokenizer.json").exists():
            tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            tok_path.write_text(json.dumps(tok_cfg, indent=2))


# ---------------------------------------------------------------------------------------------
# Local directories
# ---------------------------------------------------------------------------------------------


def load_local(
    path: Path, kind: str, device: Any, compat: bool, dtype: torch.dtype, check: bool = True
) -> Any:
    """A TL model of ``kind`` from the local HF folder ``path``, checked against HF (``check``)."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a few-MB local model
    try:
        return _load_local_quietly(path, kind, device, compat, dtype, check)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _load_local_quietly(
    path: Path, kind: str, device: Any, compat: bool, dtype: torch.dtype, check: bool
) -> Any:
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        reference = None
        if check and _is_causal_lm(path):  # HF's own forward first; freed before the bridge loads
            hf_model = _hf_model(path, dtype, device)
            reference = _reference(hf_model, device)
            del hf_model
        bridge = TransformerBridge.boot_transformers(str(path), device=device, dtype=dtype)
        if compat:
            bridge.enable_compatibility_mode(disable_warnings=True)
        from .adapter import _refuse_unsupported

        _refuse_unsupported(bridge)  # an architecture TL cannot run is refused here, with the reason
        if reference is not None:
            _check_model(bridge, reference, path, "TransformerBridge", dtype)
        return bridge
    return _hooked_from_dir(path, device, compat, dtype, check)


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _is_causal_lm(path: Path) -> bool:
    """Whether config.json names a causal-LM architecture (an encoder has no next-token logits)."""
    try:
        arch = (json.loads((path / "config.json").read_text()).get("architectures") or [""])[0]
    except (OSError, ValueError):
        return False
    return isinstance(arch, str) and arch.endswith(_CAUSAL_SUFFIXES)


def _hf_model(path: Path, dtype: torch.dtype, device: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except TypeError:  # pragma: no cover - transformers < 4.56 spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
    return model.to(device).eval()


_CHECK_TOKENS = 12
#: tolerance on log-probs, per unit of the largest |logit| (at least 1), by dtype
_CHECK_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _reference(hf_model: Any, device: Any) -> dict[str, Any]:
    """HF's own log-probs on a few fixed token ids (the oracle the TL model must match)."""
    cfg = hf_model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 64
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(cfg.vocab_size), (1, min(_CHECK_TOKENS, int(n_ctx))), generator=gen)
    ids = ids.to(device)
    with torch.no_grad():
        logits = hf_model(ids).logits
    return {"ids": ids, "logits": logits.float(), "config": cfg}


def _check_model(model: Any, reference: dict[str, Any], path: Path, what: str, dtype: Any) -> None:
    """Raise ModelError unless the TL model's log-probs equal HF's on the reference tokens."""
    with torch.no_grad():
        logits = model(reference["ids"]).float()
    hf_logits = reference["logits"]
    n_vocab = min(logits.shape[-1], hf_logits.shape[-1])
    per_token = (
        (logits[..., :n_vocab].log_softmax(-1) - hf_logits[..., :n_vocab].log_softmax(-1))
        .abs()
        .amax(-1)
        .flatten()
    )
    # float32/64: every token must agree. float16/bfloat16: the median token, because half-precision
    # rounding can flip a mixture-of-experts route or an argmax at a single token (two correct
    # builds of one model then differ there), while a wrong setting (a rotary base, an eps, a
    # soft-cap) moves every token.
    half = dtype in (torch.float16, torch.bfloat16)
    gap = float(per_token.median() if half else per_token.max())
    scale = max(1.0, float(hf_logits.abs().max()))
    tol = _CHECK_RTOL.get(dtype, 1e-2) * scale
    if gap == gap and gap <= tol:  # (gap == gap: not NaN)
        return
    cfg = reference["config"]
    arch = (getattr(cfg, "architectures", None) or [type(cfg).__name__])[0]
    wrong = [
        f"{tl_key}={getattr(model.cfg, tl_key, None)!r} where the config says {hf_name}={value!r}"
        for tl_key, (hf_name, value) in _hf_settings(cfg, model.cfg).items()
        if not _same(getattr(model.cfg, tl_key, None), value)
    ]
    untaken = _settings_tl_cannot_take(cfg)
    hints = []
    if wrong:
        hints.append("settings that differ: " + "; ".join(wrong))
    if untaken:
        hints.append("config settings TransformerLens does not model: " + "; ".join(untaken))
    if not hints:
        hints.append("no configuration setting differs, so the gap is in TransformerLens' own code")
    raise ModelError(
        f"the {what} that TransformerLens {tl_version()} builds for {str(path)!r} (family {arch}) "
        f"is not the model: its log-probs differ from Hugging Face's by {gap:.3g} on "
        f"{'the median of ' if half else ''}{reference['ids'].shape[-1]} tokens "
        f"(tolerance {tol:.2g} for {dtype}); "
        + "; ".join(hints)
        + (
            ". Try kind='bridge' on TransformerLens >= 3, or check=False to load it anyway"
            if what == "HookedTransformer"
            else ". The bridge runs HF's own modules, so this is a TransformerLens adapter "
            "problem; "
            "check=False loads it anyway"
        )
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def _rope_params(hf_config: Any) -> dict[str, Any]:
    """``rope_parameters`` (transformers 5), else ``rope_scaling`` + ``rope_theta`` (4.x)."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        return dict(params)
    out = dict(getattr(hf_config, "rope_scaling", None) or {})
    theta = getattr(hf_config, "rope_theta", None)
    if theta is not None:
        out.setdefault("rope_theta", theta)
    return out


_ALL_SETTINGS = (
    "eps", "n_key_value_heads", "d_head", "rotary_base", "rotary_base_local", "rotary_dim",
    "use_NTK_by_parts_rope", "NTK_by_parts_factor", "NTK_by_parts_low_freq_factor",
    "NTK_by_parts_high_freq_factor", "NTK_original_ctx_len", "attn_scores_soft_cap",
    "output_logits_soft_cap",
)


def _hf_settings(hf_config: Any, tl_cfg: Any) -> dict[str, tuple[str, Any]]:
    """The HookedTransformerConfig fields that the HF config determines: {tl_key: (hf_name, value)}.

    Only fields the TL config has, for families that use them (rotary settings only for rotary
    models, GQA only when the numbers of heads differ).
    """
    get = getattr
    out: dict[str, tuple[str, Any]] = {}
    if isinstance(tl_cfg, dict):  # a HookedTransformerConfig about to be built
        fields = set(_ALL_SETTINGS)
        try:
            from transformer_lens import HookedTransformerConfig

            fields &= set(HookedTransformerConfig.__dataclass_fields__)
        except ImportError:  # TL 4: no HookedTransformerConfig (only reading the settings)
            pass
        pos_type = tl_cfg.get("positional_embedding_type")
    else:
        fields = set(vars(tl_cfg))
        pos_type = get(tl_cfg, "positional_embedding_type", None)
    for hf_name in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps"):
        value = get(hf_config, hf_name, None)
        if isinstance(value, float) and "eps" in fields:
            out["eps"] = (hf_name, value)
            break
    n_heads = get(hf_config, "num_attention_heads", None)
    n_kv = get(hf_config, "num_key_value_heads", None)
    gqa = n_kv is not None and n_heads is not None and n_kv != n_heads
    if gqa and "n_key_value_heads" in fields:
        out["n_key_value_heads"] = ("num_key_value_heads", n_kv)
    head_dim = hf_config.to_dict().get("head_dim") if hasattr(hf_config, "to_dict") else None
    if isinstance(head_dim, int) and "d_head" in fields:
        out["d_head"] = ("head_dim", head_dim)
    if pos_type == "rotary":
        rope = _rope_params(hf_config)
        layered = {k: v for k, v in rope.items() if isinstance(v, dict)}
        if layered:  # transformers 5: one entry per attention type (Gemma 3)
            full = layered.get("full_attention", {})
            local = layered.get("sliding_attention", {})
            if "rope_theta" in full and "rotary_base" in fields:
                out["rotary_base"] = (
                    "rope_parameters.full_attention.rope_theta",
                    full["rope_theta"],
                )
            if "rope_theta" in local and "rotary_base_local" in fields:
                out["rotary_base_local"] = (
                    "rope_parameters.sliding_attention.rope_theta",
                    local["rope_theta"],
                )
        elif rope.get("rope_theta") is not None and "rotary_base" in fields:
            out["rotary_base"] = ("rope_theta", rope["rope_theta"])
        d_head = out.get("d_head", (None, None))[1] or (
            get(hf_config, "hidden_size", 0) // (n_heads or 1)
        )
        if get(hf_config, "rotary_dim", None) is not None:
            out["rotary_dim"] = ("rotary_dim", get(hf_config, "rotary_dim"))
        for hf_name in ("partial_rotary_factor", "rotary_pct"):
            factor = get(hf_config, hf_name, None)
            if factor is None and not layered:
                factor = rope.get(hf_name)
            if isinstance(factor, (int, float)) and d_head:
                out["rotary_dim"] = (hf_name, int(round(factor * d_head)))
                break
        rope_type = str(rope.get("rope_type") or rope.get("type") or "").lower()
        if rope_type == "llama3" and "use_NTK_by_parts_rope" in fields:
            out["use_NTK_by_parts_rope"] = ("rope_type", True)
            out["NTK_by_parts_factor"] = ("rope_parameters.factor", rope.get("factor", 1.0))
            out["NTK_by_parts_low_freq_factor"] = (
                "rope_parameters.low_freq_factor",
                rope.get("low_freq_factor", 1.0),
            )
            out["NTK_by_parts_high_freq_factor"] = (
                "rope_parameters.high_freq_factor",
                rope.get("high_freq_factor", 4.0),
            )
            out["NTK_original_ctx_len"] = (
                "rope_parameters.original_max_position_embeddings",
                rope.get(
                    "original_max_position_embeddings", get(hf_config, "max_position_embeddings")
                ),
            )
    for hf_name, tl_key in (
        ("attn_logit_softcapping", "attn_scores_soft_cap"),
        ("final_logit_softcapping", "output_logits_soft_cap"),
    ):
        value = get(hf_config, hf_name, None)
        if isinstance(value, (int, float)) and tl_key in fields:
            out[tl_key] = (hf_name, float(value))
    return out


def _settings_tl_cannot_take(hf_config: Any) -> list[str]:
    """HF settings a HookedTransformer has no field for (reported when the check fails)."""
    notes = []
    rope = _rope_params(hf_config)
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "llama3"):
        notes.append(f"rope scaling of type {rope_type!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf_config, flag, False) is True:
            notes.append(f"{flag}=True")
    window = getattr(hf_config, "sliding_window", None)
    if isinstance(window, int) and getattr(hf_config, "use_sliding_window", True):
        notes.append(f"sliding_window={window}")
    return notes


def _apply_hf_settings(cfg_dict: dict[str, Any], hf_config: Any) -> dict[str, Any]:
    """Pass every setting TL can take from the HF config (TL 2.18 drops rope_theta, for one)."""
    for tl_key, (_hf_name, value) in _hf_settings(hf_config, cfg_dict).items():
        cfg_dict[tl_key] = value
    n_kv = cfg_dict.get("n_key_value_heads")
    if n_kv is not None and n_kv == cfg_dict.get("n_heads"):
        cfg_dict["n_key_value_heads"] = None
    return cfg_dict


def _tl_config_dict(path: Path) -> dict[str, Any]:
    """TL's ``convert_hf_model_config`` for a local folder, immune to TL's name sniffing.

    TL 2.18 and 3.9 pick the family from the *path* when it contains "llama" or "gemma" (and then
    fail on a missing HF config); a neutral symlink makes them read config.json instead.
    """
    import transformer_lens.loading_from_pretrained as loading

    with tempfile.TemporaryDirectory(prefix="tlp") as tmp:
        link = Path(tmp) / "model"
        try:
            link.symlink_to(path.resolve(), target_is_directory=True)
            target = str(link)
        except OSError:  # pragma: no cover - no symlinks (Windows without privilege)
            target = str(path)
        return loading.convert_hf_model_config(target)


def _hooked_from_dir(
    path: Path, device: Any, compat: bool, dtype: torch.dtype, check: bool = True
) -> Any:
    """Build a HookedTransformer offline from a local HF directory (TL 2.x / 3.x)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoConfig, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(path)
    arch = (getattr(hf_config, "architectures", None) or [None])[0]
    hf_model = _hf_model(path, dtype, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = _reference(hf_model, "cpu") if check else None

    if arch == "GPT2LMHeadModel":
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

        n_embd, n_head = hf_config.n_embd, hf_config.n_head
        cfg = HookedTransformerConfig(
            model_name=path.name,
            n_layers=hf_config.n_layer,
            d_model=n_embd,
            n_heads=n_head,
            d_head=n_embd // n_head,
            d_mlp=hf_config.n_inner or 4 * n_embd,
            d_vocab=hf_config.vocab_size,
            n_ctx=hf_config.n_positions,
            act_fn=hf_config.activation_function,
            normalization_type="LNPre" if compat else "LN",
            eps=hf_config.layer_norm_epsilon,
            positional_embedding_type="standard",
            original_architecture="GPT2LMHeadModel",
            default_prepend_bos=True,
            device=str(device),
            dtype=dtype,
        )
        state_dict = convert_gpt2_weights(hf_model, cfg)
    else:
        import transformer_lens.loading_from_pretrained as loading

        try:
            cfg_dict = _tl_config_dict(path)
        except Exception as err:  # noqa: BLE001 - TL raises many kinds here
            raise ModelError(
                f"cannot build a HookedTransformer from {str(path)!r} (architecture {arch!r}): "
                f"{type(err).__name__}: {err}; try kind='bridge' on TransformerLens >= 3"
            ) from err
        _apply_hf_settings(cfg_dict, hf_config)
        cfg_dict.update(
            device=str(device), dtype=dtype, default_prepend_bos=True, model_name=path.name
        )
        if compat and cfg_dict.get("normalization_type") in ("LN", "RMS"):
            cfg_dict["normalization_type"] += "Pre"
        cfg = HookedTransformerConfig(**cfg_dict)
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf_model)

    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=compat,
        center_writing_weights=compat,
        center_unembed=compat,
        fold_value_biases=compat,
    )
    del hf_model, state_dict
    model = model.to(device).eval()
    if reference is not None:
        reference["ids"] = reference["ids"].to(device)
        _check_model(model, reference, path, "HookedTransformer", dtype)
    return model


# ---------------------------------------------------------------------------------------------
# TransformerLens model names
# ---------------------------------------------------------------------------------------------


def load_by_name(
    name: str, kind: str, device: Any, compat: bool, dtype: torch.dtype, *, shipped: str = ""
) -> Any:
    """A model TransformerLens knows by name (hub weights); ``shipped`` lists the shipped names
    for the error message."""
    try:
        if kind == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
            if compat:
                model.enable_compatibility_mode(disable_warnings=True)
            return model
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained(
            name,
            device=str(device),
            dtype=dtype,
            fold_ln=compat,
            center_writing_weights=compat,
            center_unembed=compat,
            fold_value_biases=compat,
        )
    except Exception as err:  # noqa: BLE001 - hub, config and name errors all end here
        raise UnknownModelError(
            f"cannot load model {name!r}: it is not a shipped model ({shipped}), "
            f"not a local directory, and TransformerLens could not load it by name "
            f"({type(err).__name__}: {_first_line(err)}). Names need weights in the Hugging Face "
            "cache or a network; a local model needs a directory path"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def set_name(model: Any, name: str) -> None:
    """Record the shipped name as ``cfg.model_name`` (instead of the install path)."""
    try:
        model.cfg.model_name = name
    except Exception:  # noqa: BLE001 - a frozen or odd cfg: keep TL's own name
        pass
