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
from ._state import check_kind, state_class

__all__ = ["Displayable", "Inputs", "Result", "pad_cat", "check_meta"]


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
    pad_id: int | None = field(default=None, repr=False, compare=False)  # padding's id (merging)

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
            parts[0].pad_id = pad_id
            return parts[0]
        prompts = None
        if all(p.prompts is not None for p in parts):
            prompts = [s for p in parts for s in p.prompts or []]
        return Inputs(
            tokens=pad_cat([p.tokens for p in parts], dim=0, pad_dims=(1,), value=pad_id),
            attention_mask=pad_cat([p.attention_mask for p in parts], dim=0, pad_dims=(1,), value=False),
            prompts=prompts,
            decode=parts[0].decode,
            pad_id=pad_id,
        )

    def merge(self, other: Inputs) -> Inputs:
        """These prompts then ``other``'s, padded to the longer width with the pad token (as a
        session pads its batches); a live decoder wins over a saved token table."""
        return _merge_inputs(self, other)

    def state_dict(self, extra_ids: Tensor | None = None) -> dict[str, Any]:
        """Tokens, mask, prompts, pad id, and the string of every token id used (plus
        ``extra_ids``), so a loaded capture shows the same strings without the tokenizer."""
        return _inputs_state(self, extra_ids)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Inputs:
        return _inputs_from_state(state)


class TokenTable:
    """A decoder rebuilt from a saved state: token id -> its string (ids not in the table print
    as numbers)."""

    def __init__(self, table: dict[int, str]) -> None:
        self.table = table

    def __call__(self, ids: list[int]) -> list[str]:
        return [self.table.get(int(i), str(i)) for i in ids]


def _decoder_for(a: Any, b: Any) -> Any:
    """The decoder of a merged input: a live tokenizer's wins over saved tables; tables unite."""
    if isinstance(a, TokenTable) and isinstance(b, TokenTable):
        return TokenTable({**a.table, **b.table})
    if a is None or isinstance(a, TokenTable):
        return b if b is not None else a
    return a


def _pad_id(inputs: Inputs) -> int | None:
    pid = getattr(inputs, "pad_id", None)
    if pid is not None:
        return int(pid)
    pad = ~inputs.attention_mask.bool()
    return int(inputs.tokens[pad][0]) if bool(pad.any()) else None


def _merge_inputs(a: Inputs, b: Inputs) -> Inputs:
    pid = _pad_id(a)
    pid = _pad_id(b) if pid is None else pid
    pid = 0 if pid is None else pid
    prompts = None
    if a.prompts is not None and b.prompts is not None:
        prompts = a.prompts + b.prompts
    return Inputs(
        tokens=pad_cat([a.tokens, b.tokens], dim=0, pad_dims=(1,), value=pid),
        attention_mask=pad_cat(
            [a.attention_mask, b.attention_mask], dim=0, pad_dims=(1,), value=False
        ),
        prompts=prompts,
        decode=_decoder_for(a.decode, b.decode),
        pad_id=pid,
    )


def _inputs_state(inputs: Inputs, extra_ids: Tensor | None = None) -> dict[str, Any]:
    vocab = None
    if inputs.decode is not None:
        ids = inputs.tokens.reshape(-1)
        if extra_ids is not None:
            ids = torch.cat([ids, extra_ids.reshape(-1).to(ids.dtype)])
        uniq = torch.unique(ids[ids >= 0]).tolist()
        vocab = {"ids": torch.tensor(uniq, dtype=torch.long), "strings": list(inputs.decode(uniq))}
    return {
        "tokens": inputs.tokens,
        "attention_mask": inputs.attention_mask,
        "prompts": None if inputs.prompts is None else list(inputs.prompts),
        "pad_id": getattr(inputs, "pad_id", None),
        "vocab": vocab,
    }


def _inputs_from_state(state: dict[str, Any]) -> Inputs:
    vocab = state.get("vocab")
    decode = None
    if vocab is not None:
        decode = TokenTable(dict(zip(vocab["ids"].tolist(), vocab["strings"])))
    return Inputs(tokens=state["tokens"], attention_mask=state["attention_mask"],
                  prompts=state.get("prompts"), decode=decode, pad_id=state.get("pad_id"))


#: Meta keys that may differ between the pieces of one run (each shard's model device).
_META_FREE = ("device",)


def check_meta(a: Meta | None, b: Meta | None, what: str) -> None:
    """Refuse to merge pieces from different models, modes or dtypes, naming the differing key
    (the model's device may differ: each shard runs where it runs)."""
    if a is None or b is None:
        return
    da, db = a.to_dict(), b.to_dict()
    for key in da:
        if key not in _META_FREE and da[key] != db.get(key):
            raise InputError(
                f"cannot merge {what}: meta key {key!r} differs ({db.get(key)!r} vs {da[key]!r}); "
                "pieces of one run come from one model, mode and dtype"
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
            from ._errors import SiteError

            raise SiteError(
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

    # ---------------------------------------------------------------- merging and saving
    def merge(self, other: Result) -> Result:
        """This result's prompts, then ``other``'s, capture by capture (a new result): what one
        run over both prompt lists gives, when the pieces were cut at batch boundaries. Refuses
        results of another model, mode or dtype, or other settings, naming the differing key.

            >>> model = tp.load_model()
            >>> a = tp.run(model, ["Mary saw her."], tp.Residual(), tp.ResidualMean())
            >>> b = tp.run(model, ["John gave her a book."], tp.Residual(), tp.ResidualMean())
            >>> both = a.merge(b)
            >>> both.residual.resid.shape, int(both.residual_mean.count)
            (torch.Size([5, 2, 7, 128]), 12)
        """
        if not isinstance(other, Result):
            raise InputError(f"cannot merge {type(other).__name__} into a Result; valid: a Result")
        check_meta(self.meta, other.meta, "results")
        for key in sorted(set(self.settings) | set(other.settings)):
            if self.settings.get(key) != other.settings.get(key):
                raise InputError(
                    f"cannot merge results: setting {key!r} differs ({other.settings.get(key)!r} "
                    f"vs {self.settings.get(key)!r})"
                )
        if list(self._captures) != list(other._captures):
            raise InputError(f"cannot merge results holding captures {list(other._captures)} into "
                             f"one holding {list(self._captures)}")
        inputs = self.inputs.merge(other.inputs)
        captures = {}
        for name, cap in self._captures.items():
            if hasattr(cap, "_merge"):  # captures with prompts share the merged inputs
                captures[name] = cap._merge(other._captures[name], inputs)
            else:
                captures[name] = cap.merge(other._captures[name])
        return Result(captures, inputs, self.meta, dict(self.settings))

    def state_dict(self) -> dict[str, Any]:
        """Every capture's state, the inputs (once), the model facts and the settings: tensors
        and JSON-able values only (save with :func:`tlprobes._state.save_state`)."""
        caps: dict[str, Any] = {}
        extra = []
        for name, cap in self._captures.items():
            if hasattr(cap, "_fields_state") and getattr(cap, "inputs", None) is self.inputs:
                caps[name] = {"kind": type(cap).__name__, "fields": cap._fields_state()}
                ids = cap._extra_ids() if hasattr(cap, "_extra_ids") else None
                if ids is not None:
                    extra.append(ids.reshape(-1))
            else:
                caps[name] = cap.state_dict()
        return {
            "kind": "Result",
            "captures": caps,
            "inputs": self.inputs.state_dict(torch.cat(extra) if extra else None),
            "meta": self.meta.to_dict(),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Result:
        """The result :meth:`state_dict` describes (captures of the kinds tlprobes knows)."""
        check_kind(state, cls)
        inputs = Inputs.from_state_dict(state["inputs"])
        meta = Meta(**state["meta"])
        captures = {}
        for name, cs in state["captures"].items():
            kind = state_class(cs.get("kind"))
            if "fields" in cs and hasattr(kind, "_from_fields"):
                captures[name] = kind._from_fields(cs["fields"], inputs, meta)
            else:
                captures[name] = kind.from_state_dict(cs)
        return cls(captures, inputs, meta, dict(state["settings"]))

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

