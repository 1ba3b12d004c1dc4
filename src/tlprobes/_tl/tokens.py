"""Prompts to token ids: tokenising, checking, padding and attention masks, in one place.

Prompts are tokenised one by one with the model's own ``to_tokens`` (so BOS handling is the
model's), checked against ``n_ctx`` and the vocabulary, and padded per batch (right by default,
left on request); the mask marks the real tokens::

    >>> tokens, mask = pad_sequences([[5, 6, 7], [8]], pad_id=0)
    >>> tokens.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[True, True, True], [True, False, False]])
    >>> pad_sequences([[5, 6, 7], [8]], pad_id=0, side="left")[0].tolist()
    [[5, 6, 7], [0, 0, 8]]

``tp.run`` uses :func:`as_sequences` / :func:`pad_sequences`; a session reads the input of a call
it did not make (``model(["a", "b"])``) with :func:`read_model_input`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .._errors import InputError

if TYPE_CHECKING:  # the adapter imports this module
    from .adapter import Adapter

__all__ = [
    "SIDES",
    "as_sequences",
    "check_sequences",
    "check_token_tensor",
    "decoder",
    "encode",
    "is_id_list",
    "pad_sequences",
    "pad_width",
    "read_model_input",
]

SIDES = ("right", "left")


def encode(adapter: Adapter, text: str, *, prepend_bos: bool | None = None) -> list[int]:
    """Token ids of one prompt, as the model's own ``to_tokens`` makes them."""
    adapter.require_tokenizer(f"the string {text[:40]!r}")
    kwargs: dict[str, Any] = {}
    if prepend_bos is not None:
        kwargs["prepend_bos"] = prepend_bos
    ids = adapter.model.to_tokens(text, truncate=False, move_to_device=False, **kwargs)
    return [int(i) for i in ids[0].tolist()]


def pad_sequences(
    seqs: Sequence[Sequence[int]], *, pad_id: int, side: str = "right", width: int | None = None
) -> tuple[Int[Tensor, "batch seq"], Tensor]:
    """Pad token-id lists into ``(tokens, attention_mask)`` (to ``width`` when given)."""
    if side not in SIDES:
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


def as_sequences(
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
        "str" if isinstance(x, str) else "tokens" if is_id_list(x) else type(x).__name__
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


def is_id_list(x: Any) -> bool:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return False  # b"text" is a sequence of ints, but never token ids
    if isinstance(x, Tensor):
        return not x.is_floating_point() and x.dim() == 1
    return isinstance(x, Sequence) and not isinstance(x, str) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in x
    )


def pad_width(pad_to: int | str | None, seqs: list[list[int]]) -> int | None:
    """The width every batch is padded to (``None``: each batch's longest prompt)."""
    if pad_to is None:
        return None
    if pad_to == "longest":
        return max(len(s) for s in seqs)
    if isinstance(pad_to, int) and not isinstance(pad_to, bool) and pad_to >= 1:
        return pad_to
    raise InputError(f"unknown pad_to {pad_to!r}; valid: None, 'longest', or a positive int")


def check_sequences(adapter: Adapter, seqs: list[list[int]], texts: list[str] | None) -> None:
    """Refuse empty prompts, prompts longer than ``n_ctx`` and ids outside the vocabulary."""
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


def check_token_tensor(adapter: Adapter, tokens: Tensor) -> Tensor:
    """The same checks as :func:`check_sequences`, for an unpadded ``[batch, pos]`` id tensor."""
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


def read_model_input(
    adapter: Adapter, inp: Any, kwargs: dict[str, Any]
) -> tuple[Int[Tensor, "batch seq"], Bool[Tensor, "batch seq"], list[str] | None]:
    """Token ids, attention mask and prompt strings of one model call (its first argument and
    keywords): strings are tokenised with the model's own ``to_tokens``."""
    mask = kwargs.get("attention_mask")
    if isinstance(inp, Tensor):
        if inp.is_floating_point():
            raise InputError(
                "tlprobes needs token ids (a LongTensor [batch, pos]) or strings as model input, "
                f"got a float tensor of shape {tuple(inp.shape)}"
            )
        tokens = inp if inp.dim() == 2 else inp.unsqueeze(0)
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        return tokens, mask.bool(), None
    if isinstance(inp, str):
        inp = [inp]
    if isinstance(inp, list) and inp and all(isinstance(s, str) for s in inp):
        prepend_bos = kwargs.get("prepend_bos")
        side = kwargs.get("padding_side") or getattr(adapter.hf_tokenizer, "padding_side", "right")
        bos_kw = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
        tokens = adapter.model.to_tokens(inp, padding_side=side, move_to_device=False, **bos_kw)
        if mask is None:
            lengths = [len(adapter.encode(s, prepend_bos=prepend_bos)) for s in inp]
            seq = tokens.shape[1]
            ar = torch.arange(seq)
            mask = torch.stack(
                [(ar >= seq - n) if side == "left" else (ar < n) for n in lengths]
            )
        return tokens, mask.bool(), list(inp)
    raise InputError(
        f"cannot read model input of type {type(inp).__name__}; valid: a string, a list of "
        "strings, or token ids (LongTensor [batch, pos])"
    )


def decoder(adapter: Adapter) -> Any:
    """Token id list -> strings with the model's tokenizer (``None`` when it has none)."""
    tok = adapter.hf_tokenizer
    if tok is None:
        return None

    def decode(ids: list[int]) -> list[str]:
        return tok.batch_decode([[i] for i in ids])

    return decode
