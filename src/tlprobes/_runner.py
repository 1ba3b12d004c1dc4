"""``run``: tokenise, pad, batch and capture a list of prompts (or token ids) in one call.

::

    >>> result = tp.run(model, prompts, tp.Residual(positions="last"), tp.Components(),
    ...                 batch_size=16)                                # doctest: +SKIP

Prompts are tokenised one by one with the model's own ``to_tokens`` (so BOS handling is the
model's), checked against ``n_ctx``, and padded per batch (right by default, ``padding_side="left"``
on request) with ``attention_mask`` passed to the model. The mask travels with every capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ._adapter import Adapter, adapter_for
import difflib
import inspect

from ._errors import ArgumentError, InputError, TLProbesError, choices
from ._result import Result
from ._session import Session
from .capture._base import Probe

__all__ = ["run", "pad_sequences"]

_SIDES = ("right", "left")


def pad_sequences(
    seqs: Sequence[Sequence[int]], *, pad_id: int, side: str = "right", width: int | None = None
) -> tuple[Int[Tensor, "batch seq"], Tensor]:
    """Pad token-id lists into ``(tokens, attention_mask)`` (to ``width`` when given)."""
    if side not in _SIDES:
        raise InputError(f"unknown padding_side {side!r}; valid: 'right', 'left'")
    width = max([len(s) for s in seqs] + ([width] if width is not None else []))
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        tokens[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = True
    return tokens, mask


def _as_sequences(
    adapter: Adapter, inputs: Any, attention_mask: Tensor | None, prepend_bos: bool | None
) -> tuple[list[list[int]], list[str] | None]:
    """Every prompt as a list of ids (padding removed), plus the prompt strings if given."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Tensor):
        if inputs.is_floating_point() or inputs.dim() != 2:
            raise InputError(
                f"token input must be a LongTensor [batch, pos], got dtype {inputs.dtype} and shape "
                f"{tuple(inputs.shape)}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(inputs, dtype=torch.bool)
        if attention_mask.shape != inputs.shape:
            raise InputError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but tokens have shape "
                f"{tuple(inputs.shape)}"
            )
        m = attention_mask.bool()
        return [inputs[i][m[i]].tolist() for i in range(inputs.shape[0])], None
    if attention_mask is not None:
        raise InputError("attention_mask is only accepted together with a token tensor")
    if not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise InputError(
            f"prompts must be a non-empty list of strings or token-id lists, got {type(inputs).__name__}"
        )
    kinds = {
        "str" if isinstance(x, str) else "tokens" if _is_id_list(x) else type(x).__name__
        for x in inputs
    }
    if kinds == {"str"}:
        return [adapter.encode(s, prepend_bos=prepend_bos) for s in inputs], list(inputs)
    if kinds == {"tokens"}:
        return [[int(i) for i in x] for x in inputs], None
    bad = sorted(kinds - {"str", "tokens"})
    if bad:
        raise InputError(
            f"cannot read prompts of type {', '.join(bad)}; valid: strings or lists of token ids"
        )
    raise InputError(
        "prompts mix strings and token ids; pass all strings or all token-id lists "
        f"(first string at index {next(i for i, x in enumerate(inputs) if isinstance(x, str))}, "
        f"first token list at index {next(i for i, x in enumerate(inputs) if not isinstance(x, str))})"
    )


def _is_id_list(x: Any) -> bool:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return False  # b"text" is a sequence of ints, but never token ids
    if isinstance(x, Tensor):
        return not x.is_floating_point() and x.dim() == 1
    return isinstance(x, Sequence) and not isinstance(x, str) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in x
    )


def run(
    model: Any,
    prompts: Any,
    *probes: Any,
    batch_size: int = 16,
    attention_mask: Tensor | None = None,
    padding_side: str = "right",
    prepend_bos: bool | None = None,
    pad_to: int | str | None = None,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
    shard_size: int | None = None,
    out: Any = None,
    engine: Any = "local",
    resume: bool = False,
    **forward_kwargs: Any,
) -> Result:
    """Run ``probes`` over ``prompts`` in batches and return the merged :class:`~tlprobes.Result`.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompts: a string, a list of strings, a list of token-id lists, or a LongTensor
            ``[batch, pos]`` (with ``attention_mask`` if it is padded). Never a mix.
        probes: probe instances (``tp.Residual()``, ...).
        batch_size: prompts per forward pass.
        padding_side: ``"right"`` (default) or ``"left"``.
        prepend_bos: passed to the model's ``to_tokens`` (``None``: the model's default;
            ``False`` tokenises as Hugging Face's GPT-2 tokenizer does, without BOS).
        pad_to: pad every batch to this width; ``"longest"``: to the longest prompt of the run, so
            each prompt's padded row is what one batch of all prompts would give, whatever
            ``batch_size`` (what the course's random control draws from).
        device, dtype: where captures are kept (CPU by default).
        progress: show a tqdm bar (default: when there is more than one batch).
        shard_size, out, engine, resume: a sharded, resumable run (see :mod:`tlprobes._shards`):
            prompts in fixed ranges of ``shard_size`` (a multiple of ``batch_size``), each committed
            under ``out`` by ``engine`` (``"local"``, ``"torchrun"``, ``"ray"``); ``resume=True``
            computes only shards without a valid commit. Without them nothing changes.

    Example::

        >>> res = tp.run(model, ["She gave her a book."], tp.Residual(positions=tp.Target(" her")))  # doctest: +SKIP
    """
    from ._shards.run import run_sharded, wants_sharding

    if wants_sharding(shard_size, out, engine, resume):
        return run_sharded(model, prompts, *probes, shard_size=shard_size, out=out, engine=engine,
                           resume=resume, batch_size=batch_size, attention_mask=attention_mask,
                           padding_side=padding_side, prepend_bos=prepend_bos, pad_to=pad_to,
                           device=device, dtype=dtype, progress=progress, **forward_kwargs)
    adapter = adapter_for(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ArgumentError(f"batch_size must be a positive int, got {type(batch_size).__name__} "
                            f"{batch_size!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (progress is None or isinstance(progress, bool)):
        raise ArgumentError(f"progress must be True, False or None, got {progress!r}")
    if not (prepend_bos is None or isinstance(prepend_bos, bool)):
        raise ArgumentError(f"prepend_bos must be True, False or None, got {prepend_bos!r}")
    _check_forward_kwargs(model, forward_kwargs)
    if padding_side not in _SIDES:
        raise InputError(f"unknown padding_side {padding_side!r}; valid: 'right', 'left'")
    session = Session(model, probes, device=device, dtype=dtype)  # validates probes first
    model_device = adapter.meta.device
    if isinstance(prompts, Tensor) and attention_mask is None and prompts.dim() == 2:
        # unpadded token ids: batches are row slices, checked with tensor ops (no per-token Python)
        tokens_all = _check_token_tensor(adapter, prompts)
        starts = range(0, tokens_all.shape[0], batch_size)

        def batch(start: int) -> tuple[Tensor, Tensor, list[str] | None]:
            tokens = tokens_all[start : start + batch_size]
            return tokens, torch.ones(tokens.shape, dtype=torch.long, device=tokens.device), None
    else:
        seqs, texts = _as_sequences(adapter, prompts, attention_mask, prepend_bos)
        _check_sequences(adapter, seqs, texts)
        pad_id = adapter.pad_token_id()
        starts = range(0, len(seqs), batch_size)
        width = _pad_width(pad_to, seqs)

        def batch(start: int) -> tuple[Tensor, Tensor, list[str] | None]:
            tokens, mask = pad_sequences(seqs[start : start + batch_size], pad_id=pad_id,
                                         side=padding_side, width=width)
            return tokens, mask.long(), texts[start : start + batch_size] if texts else None

    show = progress if progress is not None else len(starts) > 1
    from tqdm.auto import tqdm

    with session, torch.no_grad():
        for start in tqdm(starts, disable=not show, desc="tlprobes", unit="batch"):
            tokens, mask, session.next_prompts = batch(start)
            model(tokens.to(model_device), attention_mask=mask.to(model_device), **forward_kwargs)
            session.finish()  # the logits of this call are gone: deferred work peaks lower
    if session.n_batches != len(starts):  # pragma: no cover - defensive
        raise TLProbesError(f"expected {len(starts)} batches, captured {session.n_batches}")
    return session.result


_RUN_ARGS = ("batch_size", "attention_mask", "padding_side", "prepend_bos", "pad_to", "device",
             "dtype", "progress", "shard_size", "out", "engine", "resume")
_RESERVED = ("input", "tokens", "return_type", "start_at_layer", "stop_at_layer")


def _check_forward_kwargs(model: Any, kwargs: dict[str, Any]) -> None:
    """Extra keywords go to the model's forward: only its named keywords are accepted."""
    if not kwargs:
        return
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - an unintrospectable forward
        params = {}
    named = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for key in kwargs:
        if key in _RESERVED:
            raise ArgumentError(f"run() sets {key!r} itself; it cannot be passed through")
        if key in named:
            continue
        # a bridge's forward takes **kwargs and would swallow a typo silently: refuse every unknown
        close = difflib.get_close_matches(key, [*_RUN_ARGS, *named], n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ArgumentError(
            f"run() got an unknown keyword argument {key!r}{hint} valid: {choices(_RUN_ARGS)} "
            f"or a keyword of {type(model).__name__}.forward ({choices(named)})"
        )


def _pad_width(pad_to: int | str | None, seqs: list[list[int]]) -> int | None:
    if pad_to is None:
        return None
    if pad_to == "longest":
        return max(len(s) for s in seqs)
    if isinstance(pad_to, int) and not isinstance(pad_to, bool) and pad_to >= 1:
        return pad_to
    raise InputError(f"unknown pad_to {pad_to!r}; valid: None, 'longest', or a positive int")


def _check_sequences(adapter: Adapter, seqs: list[list[int]], texts: list[str] | None) -> None:
    for i, s in enumerate(seqs):
        if len(s) == 0 or (texts is not None and texts[i] == ""):
            raise InputError(f"prompt {i} is empty (\"\"); every prompt needs text or token ids")
        if len(s) > adapter.n_ctx:
            what = f" ({texts[i][:50]!r}...)" if texts else ""
            raise InputError(
                f"prompt {i}{what} is {len(s)} tokens long, longer than the model's context of "
                f"{adapter.n_ctx} tokens (n_ctx); shorten or split it"
            )
        bad = [t for t in s if not 0 <= t < adapter.d_vocab]
        if bad:
            raise InputError(
                f"prompt {i} holds token id {bad[0]}, outside the vocabulary 0..{adapter.d_vocab - 1}"
            )


def _check_token_tensor(adapter: Adapter, tokens: Tensor) -> Tensor:
    """The same checks as :func:`_check_sequences`, for an unpadded ``[batch, pos]`` id tensor."""
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise InputError(
            f"token input must be a LongTensor [batch, pos], got dtype {tokens.dtype} and shape "
            f"{tuple(tokens.shape)}"
        )
    batch, seq = tokens.shape
    if batch == 0:
        raise InputError("prompts must be non-empty; got a token tensor with 0 rows")
    if seq == 0:
        raise InputError("prompt 0 is empty")
    if seq > adapter.n_ctx:
        raise InputError(
            f"prompt 0 is {seq} tokens long, longer than the model's context of {adapter.n_ctx} "
            "tokens (n_ctx); shorten or split it"
        )
    bad = (tokens < 0) | (tokens >= adapter.d_vocab)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise InputError(
            f"prompt {i} holds token id {int(tokens[i, j])}, outside the vocabulary "
            f"0..{adapter.d_vocab - 1}"
        )
    return tokens.long()
