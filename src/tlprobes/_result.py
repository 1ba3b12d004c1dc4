"""What a session or a run returns: the inputs, the model facts, and one capture per probe.

::

    >>> import tlprobes as tp
    >>> model = tp.load_model()
    >>> result = tp.run(model, ["The cat saw her."], tp.Residual())
    >>> result.residual.resid.shape
    torch.Size([5, 1, 6, 128])
    >>> result.inputs.str_tokens[0]
    ['<|endoftext|>', 'The', ' cat', ' saw', ' her', '.']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ._adapter import Meta
from ._errors import InputError, choices

__all__ = ["Displayable", "Inputs", "Result", "pad_cat"]


def pad_cat(tensors: list[Tensor], *, dim: int, pad_dims: tuple[int, ...], value: Any) -> Tensor:
    """Concatenate along ``dim`` after padding each of ``pad_dims`` (at the end) to the longest."""
    if len(tensors) == 1:
        return tensors[0]
    target = {d: max(t.shape[d] for t in tensors) for d in pad_dims}
    out = []
    for t in tensors:
        for d, n in target.items():
            if t.shape[d] < n:
                shape = list(t.shape)
                shape[d] = n - t.shape[d]
                t = torch.cat([t, torch.full(shape, value, dtype=t.dtype, device=t.device)], dim=d)
        out.append(t)
    return torch.cat(out, dim=dim)


@dataclass
class Inputs:
    """The prompts a capture came from: token ids, the attention mask, and their strings.

    ``attention_mask`` is True on real tokens and False on padding; every capture keeps it, so no
    analysis has to be told about padding again. ``str_tokens`` is decoded lazily.
    """

    tokens: Int[Tensor, "batch seq"]
    attention_mask: Bool[Tensor, "batch seq"]
    prompts: list[str] | None = None
    decode: Callable[[list[int]], list[str]] | None = field(default=None, repr=False)
    _str_tokens: list[list[str]] | None = field(default=None, repr=False)

    @property
    def str_tokens(self) -> list[list[str]]:
        """Token strings per prompt (padding included; use ``attention_mask`` to drop it)."""
        if self._str_tokens is None:
            rows = self.tokens.tolist()
            if self.decode is None:
                self._str_tokens = [[str(i) for i in row] for row in rows]
            else:
                self._str_tokens = [self.decode(row) for row in rows]
        return self._str_tokens

    def valid_str_tokens(self, b: int) -> list[str]:
        """The token strings of prompt ``b`` without padding."""
        keep = self.attention_mask[b].tolist()
        return [s for s, k in zip(self.str_tokens[b], keep) if k]

    @staticmethod
    def concat(parts: list[Inputs], pad_id: int) -> Inputs:
        if len(parts) == 1:
            return parts[0]
        prompts = None
        if all(p.prompts is not None for p in parts):
            prompts = [s for p in parts for s in p.prompts or []]
        return Inputs(
            tokens=pad_cat([p.tokens for p in parts], dim=0, pad_dims=(1,), value=pad_id),
            attention_mask=pad_cat([p.attention_mask for p in parts], dim=0, pad_dims=(1,), value=False),
            prompts=prompts,
            decode=parts[0].decode,
        )


class Displayable:
    """Offline HTML display for results: ``_repr_html_`` in Jupyter, ``to_html``, ``save_html``,
    ``show`` and ``view(**options)``. ``Report.add_view`` takes any of them (the renderers register
    this class as an ``HTMLDisplayMixin``).

    Subclasses define ``_build_page()``; the renderers load on first display (no network, ever).
    """

    def _build_page(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _mixin(self) -> Any:
        from .render._repr import HTMLDisplayMixin

        class _View(HTMLDisplayMixin):
            def __init__(self, build: Callable[[], Any]):
                self._build = build

            def _build_page(self) -> Any:
                return self._build()

        return _View(self._build_page)

    def to_html(self, *, full: bool = True) -> str:
        return self._mixin().to_html(full=full)

    def _repr_html_(self) -> str:
        return self._mixin()._repr_html_()

    def save_html(self, path: Any) -> Any:
        """Write one self-contained HTML file and return its path."""
        return self._mixin().save_html(path)

    def show(self) -> Any:
        return self._mixin().show()

    def view(self, **options: Any) -> Any:
        """The notebook view as a :class:`~tlprobes.render.Page`, with the view's options
        (``AttentionCapture``: ``prompt=``, ``layer=``); it displays itself and saves to HTML."""
        import inspect

        allowed = [p for p in inspect.signature(self._build_page).parameters]
        bad = [k for k in options if k not in allowed]
        if bad:
            raise InputError(
                f"{type(self).__name__}.view() got unknown option(s) {bad}; "
                f"valid: {choices(allowed) if allowed else 'none'}"
            )
        return self._build_page(**options)


class Result(Displayable, Mapping[str, Any]):
    """The captures of one session or run, by probe name (``result["residual"]`` or ``result.residual``)."""

    def __init__(self, captures: dict[str, Any], inputs: Inputs, meta: Meta, settings: dict[str, Any]):
        self._captures = captures
        self.inputs = inputs
        self.meta = meta
        self.settings = settings

    def __getitem__(self, name: str) -> Any:
        try:
            return self._captures[name]
        except KeyError:
            from ._errors import MissingCaptureError

            raise MissingCaptureError(
                f"no capture named {name!r}; this result holds {choices(self._captures)}"
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        captures = self.__dict__.get("_captures", {})
        if name in captures:
            return captures[name]
        raise AttributeError(f"no capture named {name!r}; this result holds {choices(captures)}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._captures)

    def __len__(self) -> int:
        return len(self._captures)

    def _build_page(self) -> Any:
        """One report: the manifest, then each capture's own view."""
        from .render import Report

        report = Report(f"tlprobes: {self.meta.model_name}", {**self.meta.to_dict(), **self.settings})
        for name, capture in self._captures.items():
            if hasattr(capture, "_build_page"):
                report.add_view(capture._build_page(), caption=f"capture {name!r}")
        return report

    def __repr__(self) -> str:
        b, s = self.inputs.tokens.shape
        return (
            f"Result({', '.join(self._captures)}; {b} prompts x {s} positions; "
            f"{self.meta.model_name}, {self.meta.mode}, TL {self.meta.tl_version})"
        )

