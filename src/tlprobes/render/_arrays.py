"""Plain-array inputs for the renderers: numpy or torch in, numpy out, padding masks resolved once.

>>> import numpy as np
>>> keep_positions(np.array([False, True, True]), 3).tolist()
[1, 2]
>>> keep_positions(2, 3).tolist()
[0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from jaxtyping import Bool, Int, Shaped

from .._errors import InputError

__all__ = ["Array", "MaskLike", "as_numpy", "keep_positions", "check_tokens"]

#: What every renderer accepts for an array argument.
Array = Union[np.ndarray, torch.Tensor]
#: A padding mask for one prompt: bool/0-1 ``[pos]`` (True = real token), a valid length, or None.
MaskLike = Union[Bool[Array, " pos"], Int[Array, " pos"], int, None]


def as_numpy(x: Shaped[Array, ...] | Sequence[float], dtype: type = np.float64) -> np.ndarray:
    """A numpy copy of an array, tensor or list (tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def keep_positions(mask: MaskLike, n_pos: int) -> np.ndarray:
    """Indices of the real (non-padding) positions.

    ``mask`` is a bool or 0/1 vector of length ``n_pos`` (works for left and right padding), an
    int valid length (the first ``n`` positions: right padding), or ``None`` (keep all).
    """
    if mask is None:
        return np.arange(n_pos)
    if isinstance(mask, (int, np.integer)) and not isinstance(mask, bool):
        if not 1 <= int(mask) <= n_pos:
            raise InputError(f"valid length {int(mask)} is out of range; choose 1..{n_pos}")
        return np.arange(int(mask))
    m = as_numpy(mask, dtype=np.float64)
    if m.shape != (n_pos,):
        raise InputError(
            f"mask has shape {tuple(m.shape)}; expected ({n_pos},), one flag per position"
        )
    if not np.isin(m, (0.0, 1.0)).all():
        raise InputError(f"mask values {sorted(set(m.tolist()))[:6]} are not 0/1 or bool")
    keep = np.flatnonzero(m > 0)
    if keep.size == 0:
        raise InputError("mask keeps no positions; at least one must be True")
    return keep


def check_tokens(str_tokens: Sequence[str], n_pos: int, what: str = "pattern") -> list[str]:
    """``str_tokens`` as a list of str, checked to have one entry per position."""
    if isinstance(str_tokens, str):
        raise InputError("str_tokens must be a list of token strings, not one string")
    tokens = [str(t) for t in str_tokens]
    if len(tokens) != n_pos:
        raise InputError(
            f"got {len(tokens)} str_tokens but the {what} has {n_pos} positions; pass one per position"
        )
    return tokens
