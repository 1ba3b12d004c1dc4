"""Fields every capture shares: the positions it kept, their mask, the inputs and the model facts."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from jaxtyping import Bool, Int
from torch import Tensor

from .._display import Display
from .._result import Inputs
from .._tl.adapter import Meta

__all__ = ["Captured"]


@dataclass(frozen=True)
class Captured(Display):
    """Base of captures taken at selected positions.

    ``positions[b, k]`` is the index into prompt ``b``'s padded sequence of slot ``k`` (``-1`` for an
    empty slot) and ``mask[b, k]`` is True where the slot holds a real token. Analyzers use ``mask``
    and never look at padding.
    """

    positions: Int[Tensor, "batch k"]
    mask: Bool[Tensor, "batch k"]
    inputs: Inputs
    meta: Meta

    @property
    def tokens(self) -> Int[Tensor, "batch seq"]:
        return self.inputs.tokens

    @property
    def attention_mask(self) -> Bool[Tensor, "batch seq"]:
        return self.inputs.attention_mask

    @property
    def str_tokens(self) -> list[list[str]]:
        return self.inputs.str_tokens

    def selected_str_tokens(self) -> list[list[str]]:
        """The token string in each selected slot (``""`` for empty slots)."""
        strs = self.inputs.str_tokens
        return [
            [strs[b][p] if ok else "" for p, ok in zip(row, mrow)]
            for b, (row, mrow) in enumerate(zip(self.positions.tolist(), self.mask.tolist()))
        ]

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor field by name (for saving as safetensors)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, Tensor):
                out[f.name] = val
        return out

    def _token_metrics(self) -> dict[str, Tensor]:
        """Per-slot values (``[batch, k]``) the default view colours the tokens by."""
        return {}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.tensors().items())
        return f"{type(self).__name__}({shapes}; {self.meta.mode})"
