"""Every tensor inside a capture or result, by path: the tests that compare two runs tensor by
tensor (sharded vs unsharded, Ray vs local, a spread model vs one device) share this walk."""

from __future__ import annotations

import dataclasses

import torch


def tensors(obj, prefix=""):
    """``{path: tensor}`` over dataclass fields, dicts, lists/tuples and the attributes of tlprobes'
    own plain classes (not into models or tokenizers); ``meta`` (model facts) is left out."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    elif type(obj).__module__.startswith("tlprobes") and hasattr(obj, "__dict__"):
        items = [(k, v) for k, v in vars(obj).items() if not k.startswith("__")]
    else:
        return {}
    out = {}
    for k, v in items:
        if k == "meta":
            continue
        out.update(tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
