"""Attention patterns ``[batch, head, dest, src]`` of chosen layers and heads.

Rows are the attending (destination) positions, columns the attended (source) ones; each valid row
sums to 1 and padded keys get 0. ``capture.attention_mask`` says which rows and columns are real::

    >>> model, prompts = tp.load_model(), ["Mary saw her brother.", "John gave her a book."]
    >>> att = tp.run(model, prompts, tp.Attention(layers=[0, 2], heads=[1])).attention
    >>> att.pattern_at(2).shape                          # [batch, head, dest, src]
    torch.Size([2, 1, 7, 7])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtyping import Bool, Float, Int
from torch import Tensor

from .._adapter import Adapter, Meta
from .._errors import HeadError, InputError, LayerError, choices
from .._result import Displayable, Inputs
from ._base import BatchContext, Probe, cat_pieces

__all__ = ["Attention", "AttentionCapture"]


@dataclass(frozen=True)
class AttentionCapture(Displayable):
    """``pattern[i]`` is layer ``layers[i]``; its head axis holds ``heads``."""

    pattern: Float[Tensor, "layer batch head dest src"]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    inputs: Inputs
    meta: Meta

    @property
    def mask(self) -> Bool[Tensor, "batch seq"]:
        return self.inputs.attention_mask

    @property
    def tokens(self) -> Int[Tensor, "batch seq"]:
        return self.inputs.tokens

    @property
    def str_tokens(self) -> list[list[str]]:
        return self.inputs.str_tokens

    def pattern_at(self, layer: int) -> Float[Tensor, "batch head dest src"]:
        """The pattern of one captured layer."""
        if layer not in self.layers:
            raise LayerError(f"layer {layer} was not captured; captured layers: {choices(self.layers)}")
        return self.pattern[self.layers.index(layer)]

    def tensors(self) -> dict[str, Tensor]:
        return {"pattern": self.pattern}

    def _build_page(self, prompt: int = 0, layer: int | None = None) -> Any:
        """Head summaries of one prompt, then prompt / layer / head selectors (first 16 prompts)."""
        from ..render import Page, attention_overview, attention_prompts_view, head_summaries

        n = self.pattern.shape[1]
        if not 0 <= prompt < n:
            raise InputError(f"prompt {prompt!r} is not in this capture; choose from {choices(range(n))}")
        if layer is not None and layer not in self.layers:
            raise LayerError(f"layer {layer!r} was not captured; captured layers: {choices(self.layers)}")
        mask = self.mask[prompt].numpy()
        pat = self.pattern[:, prompt].double().numpy()
        page = Page("Attention")
        page.add_heading(f"Attention ({self.meta.model_name}, {self.meta.mode})")
        page.add_page(attention_overview(head_summaries(pat, mask), layer_labels=list(self.layers),
                                         head_labels=list(self.heads),
                                         title=f"Head overview, prompt {prompt}"))
        shown = sorted(set(range(min(n, 16))) | {prompt})
        page.add_page(attention_prompts_view(
            self.pattern[:, shown].double().numpy(), [self.str_tokens[b] for b in shown],
            mask=self.mask[shown].numpy(), layer_labels=list(self.layers),
            prompt_labels=[f"{b}: {''.join(self.inputs.valid_str_tokens(b))[:40]}" for b in shown],
            initial_prompt=shown.index(prompt),
            initial=0 if layer is None else self.layers.index(layer)))
        return page

    def __repr__(self) -> str:
        return f"AttentionCapture(pattern={tuple(self.pattern.shape)}, layers={self.layers}, heads={self.heads})"


@dataclass(frozen=True)
class Attention(Probe):
    """Capture attention patterns.

    Args:
        layers: block indices (``None``: all).
        heads: head indices (``None``: all), the same for every layer.
    """

    layers: Any = None
    heads: Any = None
    name: str = "attention"

    def _resolve(self, adapter: Adapter) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Validated (layers, heads) for this model."""
        layers = adapter.layers(self.layers)
        if self.heads is None:
            return layers, tuple(range(adapter.n_heads))
        raw = [self.heads] if isinstance(self.heads, int) else list(self.heads)
        heads = []
        for h in raw:
            if not isinstance(h, int) or not -adapter.n_heads <= h < adapter.n_heads:
                raise HeadError(
                    f"head {h!r} is out of range for {adapter.meta.model_name} with "
                    f"{adapter.n_heads} heads per layer; valid: 0..{adapter.n_heads - 1}"
                )
            heads.append(h % adapter.n_heads)
        return layers, tuple(dict.fromkeys(heads))

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        layers, _ = self._resolve(adapter)
        return [("pattern", l) for l in layers]

    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        layers, heads = self._resolve(ctx.adapter)
        return {"layers": layers, "heads": heads}

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        heads, layers = scratch["heads"], scratch["layers"]
        if len(heads) != t.shape[1]:
            t = t[:, list(heads)]
        ctx.put(scratch, "pattern", layers.index(layer), len(layers), t)

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        layers = scratch["layers"]
        return {"pattern": ctx.take(scratch, "pattern", len(layers), self.name), "layers": layers,
                "heads": scratch["heads"]}

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return cat_pieces(pieces, {"pattern": (1, (3, 4), 0.0)})

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> AttentionCapture:
        return AttentionCapture(
            pattern=piece["pattern"],
            layers=piece["layers"],
            heads=piece["heads"],
            inputs=inputs,
            meta=meta,
        )


