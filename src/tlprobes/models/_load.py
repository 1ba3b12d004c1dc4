"""One call to load a model on any TransformerLens line: shipped defaults, local dirs, TL names.

>>> import tlprobes as tp
>>> model = tp.load_model("default")            # TL 4: TransformerBridge; TL 2/3: HookedTransformer
>>> model.to_str_tokens("Mary saw her dog.")[1:]
['Mary', ' saw', ' her', ' dog', '.']

* ``"default"`` (alias ``"default-s0"``) and ``"default-s1"`` are the two shipped models (same
  corpus and tokenizer, model seeds 0 and 1), loaded offline from the package.
* A path to a local Hugging Face directory (``config.json`` + weights + tokenizer files) loads the
  same way, offline.
* Any other string is handed to TransformerLens as a model name (``"gpt2-xl"``): on TL 4
  ``TransformerBridge.boot_transformers(name)``, on TL 2/3 ``HookedTransformer.from_pretrained``.
  That needs weights on disk or a network.

``kind="bridge"`` or ``"hooked"`` overrides the default (bridge on TL 4, HookedTransformer on
TL 2/3; TL 3 has both). ``compat=True`` applies TransformerLens' weight processing (fold LN,
centre writing weights and unembed, fold value biases): ``enable_compatibility_mode()`` on a
bridge, the ``from_pretrained`` defaults on a HookedTransformer. ``compat=False`` keeps the raw
weights, so the logits equal Hugging Face's.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from .._errors import ModelError, UnknownModelError, choices

__all__ = [
    "SHIPPED_MODELS",
    "UnknownModelError",
    "load_model",
    "model_dir",
    "shipped_models",
    "tl_major_version",
]

_HERE = Path(__file__).resolve().parent

#: shipped model name -> folder inside ``tlprobes/models``
SHIPPED_MODELS: dict[str, str] = {
    "default": "default_s0",
    "default-s0": "default_s0",
    "default-s1": "default_s1",
}

_KINDS = ("bridge", "hooked")


def shipped_models() -> tuple[str, ...]:
    """Names of the models shipped inside the package.

    >>> shipped_models()
    ('default', 'default-s0', 'default-s1')
    """
    return tuple(SHIPPED_MODELS)


def model_dir(name: str = "default") -> Path:
    """The folder of a shipped model (HF layout: config.json, model.safetensors, tokenizer files).

    >>> (model_dir("default-s1") / "model.safetensors").exists()
    True
    """
    if name not in SHIPPED_MODELS:
        raise UnknownModelError(
            f"no shipped model named {name!r}; shipped models are {choices(SHIPPED_MODELS)}"
        )
    path = _HERE / SHIPPED_MODELS[name]
    if not (path / "config.json").exists():  # pragma: no cover - a broken install
        raise UnknownModelError(
            f"shipped model {name!r} is missing its files in {path} (expected config.json, "
            "model.safetensors and tokenizer files); reinstall tlprobes"
        )
    return path


def tl_major_version() -> int:
    """The installed TransformerLens major version (2, 3 or 4)."""
    return int(importlib.metadata.version("transformer-lens").split(".")[0])


def _resolve_kind(kind: str | None, tl_major: int) -> str:
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


def load_model(
    name_or_dir: str | Path = "default",
    *,
    device: str | torch.device = "cpu",
    compat: bool = False,
    dtype: torch.dtype | None = None,
    kind: str | None = None,
) -> Any:
    """Load a TransformerLens model: a shipped default, a local HF directory, or a TL model name.

    >>> m = load_model("default-s1", compat=True)
    >>> m.cfg.n_layers, m.cfg.d_model
    (4, 128)

    Returns a ``TransformerBridge`` (TL 4, or ``kind="bridge"`` on TL 3) or a ``HookedTransformer``
    (TL 2/3, or ``kind="hooked"``). Raises :class:`UnknownModelError` for a ``"default..."`` name
    that is not shipped (listing the shipped ones) and for a name TransformerLens cannot load.
    """
    tl_major = tl_major_version()
    kind_ = _resolve_kind(kind, tl_major)
    dtype_ = dtype if dtype is not None else torch.float32
    name = str(name_or_dir)

    if name in SHIPPED_MODELS:
        model = _load_local(model_dir(name), kind_, device, compat, dtype_)
        _set_name(model, name)
        return model
    if isinstance(name_or_dir, Path) or Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise UnknownModelError(
                f"{str(path)!r} is a directory without config.json; a local model needs the "
                "Hugging Face layout (config.json, weights, tokenizer files); shipped models are "
                f"{choices(SHIPPED_MODELS)}"
            )
        return _load_local(path, kind_, device, compat, dtype_)
    if name.startswith("default") or name.startswith("tlprobes"):
        raise UnknownModelError(
            f"no shipped model named {name!r}; shipped models are {choices(SHIPPED_MODELS)}"
        )
    import difflib  # a typo of a shipped name fails now, not after ~23 s of hub retries

    close = difflib.get_close_matches(name.lower(), list(SHIPPED_MODELS), n=1, cutoff=0.75)
    if close:
        raise UnknownModelError(f"no model named {name!r}; did you mean {close[0]!r}? shipped "
                                f"models are {choices(SHIPPED_MODELS)}")
    return _load_by_name(name, kind_, device, compat, dtype_)


# ---------------------------------------------------------------------------------------------
# Local directories
# ---------------------------------------------------------------------------------------------


def _load_local(path: Path, kind: str, device: Any, compat: bool, dtype: torch.dtype) -> Any:
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a few-MB local model
    try:
        return _load_local_quietly(path, kind, device, compat, dtype)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _load_local_quietly(
    path: Path, kind: str, device: Any, compat: bool, dtype: torch.dtype
) -> Any:
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(path), device=device, dtype=dtype)
        if compat:
            bridge.enable_compatibility_mode(disable_warnings=True)
        return bridge
    return _hooked_from_dir(path, device, compat, dtype)


def _hooked_from_dir(path: Path, device: Any, compat: bool, dtype: torch.dtype) -> Any:
    """Build a HookedTransformer offline from a local HF directory (TL 2.x / 3.x)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(path)
    arch = (getattr(hf_config, "architectures", None) or [None])[0]
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

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
            cfg_dict = loading.convert_hf_model_config(str(path))
        except Exception as err:  # noqa: BLE001 - TL raises many kinds here
            raise ModelError(
                f"cannot build a HookedTransformer from {str(path)!r} (architecture {arch!r}): "
                f"{type(err).__name__}: {err}; try kind='bridge' on TransformerLens >= 3"
            ) from err
        cfg_dict.update(device=str(device), dtype=dtype, default_prepend_bos=True)
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
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# TransformerLens model names
# ---------------------------------------------------------------------------------------------


def _load_by_name(name: str, kind: str, device: Any, compat: bool, dtype: torch.dtype) -> Any:
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
            f"cannot load model {name!r}: it is not a shipped model ({choices(SHIPPED_MODELS)}), "
            f"not a local directory, and TransformerLens could not load it by name "
            f"({type(err).__name__}: {_first_line(err)}). Names need weights in the Hugging Face "
            "cache or a network; a local model needs a directory path"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def _set_name(model: Any, name: str) -> None:
    """Record the shipped name as ``cfg.model_name`` (instead of the install path)."""
    try:
        model.cfg.model_name = name
    except Exception:  # noqa: BLE001 - a frozen or odd cfg: keep TL's own name
        pass
