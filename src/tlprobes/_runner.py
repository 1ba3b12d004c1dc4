"""``run``: batch a list of prompts (or token ids) through a session, with a progress bar.

::

    >>> result = tp.run(model, prompts, tp.Residual(positions="last"), tp.Components(),
    ...                 batch_size=16)                                # doctest: +SKIP

Tokenising, checking and padding are :mod:`tlprobes._tl.tokens`' (the model's own ``to_tokens``,
``n_ctx``, right or left padding); each batch goes through :meth:`Session.forward` with its
``attention_mask``, and the mask travels with every capture.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor

from ._errors import ArgumentError, InputError, SessionError, choices
from ._result import Result
from ._session import Session
from ._tl import tokens as _tokens
from ._tl.adapter import Adapter, adapter_for

__all__ = ["run"]


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
        return run_sharded(run, model, prompts, *probes, shard_size=shard_size, out=out, engine=engine,
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
    _check_forward_kwargs(adapter, forward_kwargs)
    if padding_side not in _tokens.SIDES:
        raise InputError(f"unknown padding_side {padding_side!r}; valid: 'right', 'left'")
    session = Session(model, probes, device=device, dtype=dtype)  # validates probes first
    if isinstance(prompts, Tensor) and attention_mask is None and prompts.dim() == 2:
        # unpadded token ids: batches are row slices, checked with tensor ops (no per-token Python)
        tokens_all = _tokens.check_token_tensor(adapter, prompts)
        starts = range(0, tokens_all.shape[0], batch_size)

        def batch(start: int) -> tuple[Tensor, Tensor, list[str] | None]:
            tokens = tokens_all[start : start + batch_size]
            return tokens, torch.ones(tokens.shape, dtype=torch.long, device=tokens.device), None
    else:
        seqs, texts = _tokens.as_sequences(adapter, prompts, attention_mask, prepend_bos)
        _tokens.check_sequences(adapter, seqs, texts)
        pad_id = adapter.pad_token_id()
        starts = range(0, len(seqs), batch_size)
        width = _tokens.pad_width(pad_to, seqs)

        def batch(start: int) -> tuple[Tensor, Tensor, list[str] | None]:
            tokens, mask = _tokens.pad_sequences(seqs[start : start + batch_size], pad_id=pad_id,
                                                 side=padding_side, width=width)
            return tokens, mask.long(), texts[start : start + batch_size] if texts else None

    show = progress if progress is not None else len(starts) > 1
    from tqdm.auto import tqdm

    with session, torch.no_grad():
        for start in tqdm(starts, disable=not show, desc="tlprobes", unit="batch"):
            tokens, mask, texts_ = batch(start)
            session.forward(tokens, mask, prompts=texts_, **forward_kwargs)
            session.finish()  # the logits of this call are gone: deferred work peaks lower
    if session.n_batches != len(starts):  # pragma: no cover - defensive
        raise SessionError(f"expected {len(starts)} batches, captured {session.n_batches}")
    return session.result


_RUN_ARGS = ("batch_size", "attention_mask", "padding_side", "prepend_bos", "pad_to", "device",
             "dtype", "progress", "shard_size", "out", "engine", "resume")
_RESERVED = ("input", "tokens", "return_type", "start_at_layer", "stop_at_layer")


def _check_forward_kwargs(adapter: Adapter, kwargs: dict[str, Any]) -> None:
    """Extra keywords go to the model's forward: only its named keywords are accepted."""
    if not kwargs:
        return
    named = adapter.forward_keywords()
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
            f"or a keyword of {adapter.meta.model_kind}.forward ({choices(named)})"
        )


