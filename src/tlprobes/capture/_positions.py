"""Position selectors: which token positions of each prompt a probe keeps.

A selector is one of

* ``"all"`` (default): every valid (non-padding) position;
* ``"last"``: the last valid position of each prompt;
* an ``int`` or a list of ints: positions counted among the *valid* tokens of each prompt (so left
  padding never shifts them); negative values count back from the last valid token; a list of lists
  gives each prompt its own positions;
* :class:`Target`: the positions of a word, e.g. ``Target(" her")`` (its last sub-token when the
  word is several tokens) or ``Target(" her", offset=-1)``, the token before it.

::

    >>> import tlprobes as tp
    >>> tp.Residual(positions=tp.Target(" her", offset=-1))   # doctest: +SKIP

Resolution returns ``positions`` (index into the padded sequence, ``-1`` where a slot is empty) and
``valid`` (a bool mask of the same ``[batch, k]`` shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .._errors import PositionError, choices

__all__ = ["Target", "PositionSpec", "check_spec", "resolve_positions"]

_OCCURRENCES = ("first", "last", "all")


@dataclass(frozen=True)
class Target:
    """The position(s) of a target word in each prompt.

    Args:
        word: the word as it appears inside the text, with its leading space (``" her"``), or a
            token id.
        offset: shift from the word's last sub-token (``-1``: the token before the word).
        occurrence: ``"first"`` (the course's choice), ``"last"``, or ``"all"`` occurrences.

    Example::

        >>> Target(" her", offset=-1)
        Target(word=' her', offset=-1, occurrence='first')
    """

    word: str | int
    offset: int = 0
    occurrence: Literal["first", "last", "all"] = "first"

    def __post_init__(self) -> None:
        if not isinstance(self.word, (str, int)) or isinstance(self.word, bool) or self.word == "":
            raise PositionError(f"Target word must be a non-empty str or a token id, got {self.word!r}")
        if self.occurrence not in _OCCURRENCES:
            raise PositionError(
                f"unknown occurrence {self.occurrence!r}; valid: {choices(_OCCURRENCES)}"
            )
        if not isinstance(self.offset, int):
            raise PositionError(f"Target offset must be an int, got {self.offset!r}")


PositionSpec = Any  # "all" | "last" | int | Sequence[int] | Sequence[Sequence[int]] | Target


def check_spec(spec: PositionSpec) -> PositionSpec:
    """Validate a selector eagerly (at probe construction), so typos fail before any forward pass."""
    if spec is None:
        return "all"
    if isinstance(spec, str):
        if spec not in ("all", "last"):
            raise PositionError(
                f"unknown position selector {spec!r}; valid: 'all', 'last', an int, a list of ints, "
                "a list of lists (one per prompt), or tlprobes.Target(word, offset=...)"
            )
        return spec
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, bool):
        raise PositionError(f"position selector must not be a bool, got {spec!r}")
    if isinstance(spec, int):
        return (spec,)
    if isinstance(spec, Tensor):
        spec = spec.tolist()
    if isinstance(spec, Sequence) and len(spec) > 0:
        if all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            return tuple(spec)
        if all(isinstance(row, Sequence) and not isinstance(row, str) for row in spec):
            rows = tuple(tuple(row) for row in spec)
            for row in rows:
                if not all(isinstance(i, int) and not isinstance(i, bool) for i in row):
                    raise PositionError(f"per-prompt positions must be ints, got {row!r}")
            return rows
    raise PositionError(
        f"cannot read position selector {spec!r}; valid: 'all', 'last', an int, a list of ints, "
        "a list of lists (one per prompt), or tlprobes.Target(word, offset=...)"
    )


def _find(seq: list[int], sub: list[int]) -> list[int]:
    """End indices (last sub-token) of every occurrence of ``sub`` in ``seq``."""
    n = len(sub)
    return [i + n - 1 for i in range(len(seq) - n + 1) if seq[i : i + n] == sub]


def _single_token(
    spec: Target, token: int, tokens: Tensor, mask: Tensor, where: Any
) -> tuple[Tensor, Tensor]:
    """The fast path of :func:`resolve_positions` for a one-token target (e.g. ``" her"``)."""
    batch, seq = tokens.shape
    hit = (tokens == token) & mask
    found = hit.any(1)
    if not found.all():
        b = int((~found).nonzero()[0])
        raise PositionError(
            f"target {spec.word!r} (token ids {[token]}) is absent from {where(b)}; "
            "check the leading space (' her' vs 'her') or the tokenisation"
        )
    ar = torch.arange(seq).expand(batch, seq)
    first = torch.where(hit, ar, seq).min(1).values
    last = torch.where(hit, ar, -1).max(1).values
    end = first if spec.occurrence == "first" else last
    # offsets count real tokens, so padding in between never shifts them
    rank = mask.long().cumsum(1).gather(1, end[:, None]) - 1 + spec.offset
    n_valid = mask.sum(1, keepdim=True)
    bad = (rank < 0) | (rank >= n_valid)
    if bad.any():
        b = int(bad.flatten().nonzero()[0])
        raise PositionError(
            f"offset {spec.offset} from target {spec.word!r} at valid position "
            f"{int(rank[b]) - spec.offset} falls outside {where(b)} (valid positions "
            f"0..{int(n_valid[b]) - 1})"
        )
    order = torch.where(mask, ar, seq).sort(dim=1).values  # valid positions first, in order
    pos = order.gather(1, rank)
    return pos, torch.ones_like(pos, dtype=torch.bool)


def resolve_positions(
    spec: PositionSpec,
    tokens: Int[Tensor, "batch seq"],
    mask: Bool[Tensor, "batch seq"],
    *,
    encode_word: Any = None,
    describe: Any = None,
) -> tuple[Int[Tensor, "batch k"], Bool[Tensor, "batch k"]]:
    """Turn a selector into ``(positions, valid)`` for one batch.

    ``encode_word(word) -> list[int]`` tokenises a target word; ``describe(b) -> str`` renders prompt
    ``b`` for error messages.
    """
    spec = check_spec(spec)
    batch, seq = tokens.shape
    mask = mask.bool()
    if isinstance(spec, str) and spec == "all":
        pos = torch.arange(seq).expand(batch, seq).clone()
        return pos.masked_fill(~mask, -1), mask.clone()

    def where(b: int) -> str:
        return describe(b) if describe is not None else f"prompt {b}"

    if isinstance(spec, Target) and spec.occurrence != "all":
        sub = [spec.word] if isinstance(spec.word, int) else None
        if sub is None and encode_word is not None:
            sub = encode_word(spec.word)
        if sub is not None and len(sub) == 1:  # one token: vectorised, no per-row Python
            return _single_token(spec, sub[0], tokens, mask, where)

    valid_idx = [mask[b].nonzero().flatten().tolist() for b in range(batch)]
    rows: list[list[int]] = []

    if isinstance(spec, str) and spec == "last":
        for b in range(batch):
            if not valid_idx[b]:
                raise PositionError(f"{where(b)} has no valid token (all padding)")
            rows.append([valid_idx[b][-1]])
    elif isinstance(spec, Target):
        if isinstance(spec.word, int):
            sub = [spec.word]
        else:
            if encode_word is None:
                raise PositionError("Target words need a tokenizer; give the target as a token id")
            sub = encode_word(spec.word)
            if not sub:
                raise PositionError(f"target word {spec.word!r} encodes to no tokens")
        for b in range(batch):
            ids = tokens[b, valid_idx[b]].tolist()
            ends = _find(ids, sub)
            if not ends:
                raise PositionError(
                    f"target {spec.word!r} (token ids {sub}) is absent from {where(b)}; "
                    "check the leading space (' her' vs 'her') or the tokenisation"
                )
            if spec.occurrence == "first":
                ends = ends[:1]
            elif spec.occurrence == "last":
                ends = ends[-1:]
            picked = []
            for e in ends:
                j = e + spec.offset
                if not 0 <= j < len(ids):
                    raise PositionError(
                        f"offset {spec.offset} from target {spec.word!r} at valid position {e} falls "
                        f"outside {where(b)} (valid positions 0..{len(ids) - 1})"
                    )
                picked.append(valid_idx[b][j])
            rows.append(picked)
    else:
        per_prompt = spec if isinstance(spec[0], tuple) else None
        if per_prompt is not None and len(per_prompt) != batch:
            raise PositionError(
                f"got positions for {len(per_prompt)} prompts but the batch holds {batch}; give one "
                "list per prompt or one list for all"
            )
        for b in range(batch):
            want = per_prompt[b] if per_prompt is not None else spec
            n = len(valid_idx[b])
            picked = []
            for i in want:
                if not -n <= i < n:
                    raise PositionError(
                        f"position {i} is out of range for {where(b)} with {n} valid tokens; "
                        f"valid: {-n}..{n - 1}"
                    )
                picked.append(valid_idx[b][i % n])
            rows.append(picked)

    k = max(len(r) for r in rows)
    pos = torch.full((batch, k), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        pos[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return pos, pos >= 0
