"""What makes two sharded runs the same run: ``--resume`` refuses a different fingerprint.

::

    >>> from tlprobes._shards.fingerprint import differences
    >>> differences({"batch_size": 4, "tl_version": "4.3"}, {"batch_size": 8, "tl_version": "4.3"})
    ['batch_size: 4 -> 8']
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

import torch

__all__ = ["fingerprint", "differences", "prompts_hash", "weights_hash"]

_WEIGHTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def weights_hash(model: Any) -> str:
    """SHA-256 over every parameter and buffer: name, dtype, shape and bytes (cached per model).

    Weights that accelerate offloaded to disk (meta placeholders) count by name, dtype and shape
    only: their bytes are not in memory to hash."""
    try:
        return _WEIGHTS[model]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.device.type == "meta":  # offloaded to disk by accelerate: no bytes here to read
            h.update(b"offloaded|")
            continue
        flat = t.cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest = "sha256:" + h.hexdigest()
    try:
        _WEIGHTS[model] = digest
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return digest


def prompts_hash(prompts: Any, attention_mask: torch.Tensor | None = None) -> str:
    """SHA-256 of the prompts as given (strings, token-id lists, or a token tensor and its mask)."""
    h = hashlib.sha256()
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        h.update(f"tensor|{tuple(prompts.shape)}|".encode())
        h.update(prompts.detach().cpu().long().contiguous().numpy().tobytes())
        if attention_mask is not None:
            h.update(b"|mask|" + attention_mask.detach().cpu().bool().contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()
    for p in prompts:
        if isinstance(p, str):
            data = b"s" + p.encode("utf-8")
        else:
            data = b"t" + json.dumps([int(i) for i in p]).encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return "sha256:" + h.hexdigest()


def fingerprint(*, model: Any, meta: dict[str, Any], probes: list[str], settings: dict[str, Any],
                prompts: str, n_prompts: int, shard_size: int, batch_size: int,
                suite: Any = None) -> dict[str, Any]:
    """The JSON-able fingerprint of one sharded ``tp.run`` call."""
    return {
        "suite": suite,
        "probes": probes,
        "settings": settings,
        "model": meta.get("model_name"),
        "weights": weights_hash(model),
        "tl_version": meta.get("tl_version"),
        "mode": meta.get("mode"),
        "dtype": meta.get("dtype"),
        "prompts": prompts,
        "n_prompts": n_prompts,
        "shard_size": shard_size,
        "batch_size": batch_size,
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (nested dicts by dotted key)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in differences(a, b)]
        elif a != b:
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
