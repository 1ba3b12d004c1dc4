"""The final norm on bare arrays: the one pure-array layer norm of the analyses.

Captures carry the model's own final norm (``Adapter.final_norm``, the model's module); arrays
carry none, so the analyses that read arrays through a norm (the logit lens on states) take its
*parameters* here, never a model::

    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0, 3.0]])
    >>> layer_norm(x, "parameter-free", 0.0).round(4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    >>> layer_norm(x, (np.full(3, 2.0), np.ones(3)), 0.0).round(4).tolist()
    [[-1.4495, 1.0, 3.4495]]
    >>> layer_norm(x, "identity", 0.0).tolist()
    [[1.0, 2.0, 3.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._inputs import as_array

__all__ = ["LN_WORDS", "layer_norm"]

#: the norms named by a word: centre and scale without parameters, or none at all
LN_WORDS = ("parameter-free", "identity")


def layer_norm(x: np.ndarray, ln: Any, eps: float) -> np.ndarray:
    """``x`` through a final norm given by its parameters.

    ``ln`` is ``"parameter-free"`` (centre, scale to unit RMS), ``"identity"``, a
    ``(weight, bias)`` pair (``bias`` may be ``None``) or a callable on tensors (a module, or the
    model's own norm carried with a capture, which is then called in its own dtype).
    """
    if isinstance(ln, str):
        if ln == "identity":
            return x
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc**2).mean(-1, keepdims=True) + eps)
    if callable(ln):
        if isinstance(ln, torch.nn.Module):
            p = next(iter(ln.parameters()), None)
            dt = p.dtype if p is not None else torch.float32
            with torch.no_grad():
                return as_array(ln(torch.as_tensor(x, dtype=dt)))
        with torch.no_grad():
            return as_array(ln(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))))
    xc = x - x.mean(-1, keepdims=True)
    y = xc / np.sqrt((xc**2).mean(-1, keepdims=True) + eps)
    w, b = ln
    return y * as_array(w) + (0.0 if b is None else as_array(b))
