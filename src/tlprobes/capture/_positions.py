"""Position selectors: which token positions of each prompt a probe keeps.

A selector is one of

* ``"all"`` (default): every valid (non-padding) position;
* ``"last"``: the last valid position of each prompt;
* an ``int`` or a list of ints: positions counted among the *valid* tokens of each prompt (so left
  padding never shifts them); negative values count back from the last valid token; a list of lists
  gives each prompt its own positions;
* :class:`Target`: the positions of a word, e.g. ``Target(" her")`` (its last sub-token when the
  word is several tokens; ``piece="first"`` or ``"mean"`` on request) or
  ``Target(" her", offset=-1)``, the token before it. Offsets count from the word's boundaries:
  negative ones from its first piece, positive ones from its last piece, so ``offset=-1`` is the
  token before the word however many pieces it has.

Every place that looks a target word up (the probes here, and every analyzer given a word) goes
through :func:`target_indices`, so a word resolves to the same tokens everywhere.

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

__all__ = [
    "BatchPositions", "Target", "PositionSpec", "check_spec", "resolve_positions", "target_indices",
    "word_spans",
]

_OCCURRENCES = ("first", "last", "all")
_PIECES = ("last", "first", "mean")


@dataclass(frozen=True)
class Target:
    """The position(s) of a target word in each prompt.

    Args:
        word: the word as it appears inside the text, with its leading space (``" her"``), or a
            token id.
        offset: ``0`` is the word itself; a negative offset counts back from the word's *first*
            piece (``-1``: the token before the word) and a positive one forward from its *last*
            piece (``+1``: the token after it), so offsets never land inside a multi-token word.
        occurrence: ``"first"`` (the course's choice), ``"last"``, or ``"all"`` occurrences.
        piece: which piece stands for a word split into several tokens (at ``offset=0``):
            ``"last"`` (default; it has seen the whole word), ``"first"``, or ``"mean"`` (every
            piece: a probe keeps them all, an analyzer averages their vectors).

    With GPT-2's BPE, ``" Anastasia"`` is ``[' An', 'ast', 'asia']``: ``Target(" Anastasia")`` is
    ``'asia'``, ``piece="first"`` is ``' An'``, ``offset=-1`` the token before ``' An'`` and
    ``offset=1`` the token after ``'asia'``.

    Example::

        >>> Target(" her", offset=-1)
        Target(word=' her', offset=-1, occurrence='first', piece='last')
    """

    word: str | int
    offset: int = 0
    occurrence: Literal["first", "last", "all"] = "first"
    piece: Literal["last", "first", "mean"] = "last"

    def __post_init__(self) -> None:
        if not isinstance(self.word, (str, int)) or isinstance(self.word, bool) or self.word == "":
            raise PositionError(f"Target word must be a non-empty str or a token id, got {self.word!r}")
        if self.occurrence not in _OCCURRENCES:
            raise PositionError(
                f"unknown occurrence {self.occurrence!r}; valid: {choices(_OCCURRENCES)}"
            )
        if not isinstance(self.offset, int) or isinstance(self.offset, bool):
            raise PositionError(f"Target offset must be an int, got {self.offset!r}")
        if self.piece not in _PIECES:
            raise PositionError(f"unknown piece {self.piece!r}; valid: {choices(_PIECES)}")


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


def word_spans(seq: Sequence[Any], word: Sequence[Any] | str) -> list[tuple[int, int]]:
    """``(first, last)`` index of every occurrence of a word in ``seq``.

    ``word`` is the word's pieces (token ids, or token strings), matched as an exact run, or a
    ``str`` matched against a ``seq`` of token strings: a run of tokens whose strings join to
    exactly the word (how an analyzer without a tokenizer finds ``" Anastasia"`` in
    ``[..., ' An', 'ast', 'asia', ...]``; for byte-level BPE this is the run the tokenizer makes).

    >>> word_spans([5, 1, 2, 5, 1, 2], [1, 2])
    [(1, 2), (4, 5)]
    >>> word_spans(["I", " saw", " An", "ast", "asia"], " Anastasia")
    [(2, 4)]
    """
    if isinstance(word, str):
        out = []
        for i in range(len(seq)):
            acc = ""
            for j in range(i, len(seq)):
                acc += str(seq[j])
                if acc == word:
                    out.append((i, j))
                    break
                if not word.startswith(acc) or len(acc) >= len(word):
                    break
        return out
    n = len(word)
    if n == 0:
        return []
    w = list(word)
    return [(i, i + n - 1) for i in range(len(seq) - n + 1) if list(seq[i : i + n]) == w]


def target_indices(
    seq: Sequence[Any],
    word: Sequence[Any] | str,
    target: Target,
    *,
    where: str = "the prompt",
    shown: Any = None,
) -> list[list[int]]:
    """The one resolver of a :class:`Target`: indices into ``seq`` (a prompt's valid tokens) of
    each picked occurrence, one list per occurrence (several indices only for ``piece="mean"``).

    ``word``: the target's pieces or string, as for :func:`word_spans`. Raises
    :class:`PositionError` when the word is absent or the offset falls outside the prompt.

    >>> seq = ["I", " saw", " An", "ast", "asia", "."]
    >>> target_indices(seq, " Anastasia", Target(" Anastasia", offset=-1))
    [[1]]
    """
    spans = word_spans(seq, word)
    if not spans:
        what = f"token ids {list(word)}" if shown is None else shown
        raise PositionError(
            f"target {target.word!r} ({what}) "
            f"is absent from {where}; check the leading space (' her' vs 'her') or the tokenisation"
        )
    if target.occurrence == "first":
        spans = spans[:1]
    elif target.occurrence == "last":
        spans = spans[-1:]
    out = []
    for first, last in spans:
        off = target.offset
        if off < 0:
            picked = [first + off]
        elif off > 0:
            picked = [last + off]
        elif target.piece == "first":
            picked = [first]
        elif target.piece == "mean":
            picked = list(range(first, last + 1))
        else:
            picked = [last]
        if not all(0 <= j < len(seq) for j in picked):
            raise PositionError(
                f"offset {off} from target {target.word!r} at valid positions {first}..{last} "
                f"falls outside {where} (valid positions 0..{len(seq) - 1})"
            )
        out.append(picked)
    return out


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

    if isinstance(spec, Target) and spec.occurrence != "all":  # one piece: first == last
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
            picked = [j for occ in target_indices(ids, sub, spec, where=where(b)) for j in occ]
            rows.append([valid_idx[b][j] for j in picked])
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


class BatchPositions:
    """The selectors of one batch: each resolved once (cached), and the gather that applies them.

    >>> tokens = torch.tensor([[5, 6, 7], [8, 9, 0]])
    >>> sel = BatchPositions(tokens, tokens != 0)
    >>> sel.resolve("last")[0].tolist()
    [[2], [1]]
    >>> sel.select(torch.arange(6.0).view(2, 3, 1), "last").flatten().tolist()
    [2.0, 4.0]
    """

    def __init__(
        self,
        tokens: Int[Tensor, "batch seq"],
        mask: Bool[Tensor, "batch seq"],
        *,
        encode_word: Any = None,
        describe: Any = None,
    ):
        self.tokens = tokens
        self.mask = mask.bool()
        self.encode_word = encode_word
        self.describe = describe
        self._resolved: dict[Any, tuple[Tensor, Tensor]] = {}
        self._index: dict[tuple[Any, torch.device, torch.Size], Tensor] = {}

    @staticmethod
    def _key(spec: PositionSpec) -> Any:
        return spec if not isinstance(spec, list) else tuple(spec)

    def resolve(self, spec: PositionSpec) -> tuple[Int[Tensor, "batch k"], Bool[Tensor, "batch k"]]:
        """``(positions, valid)`` of a selector for this batch (see :func:`resolve_positions`)."""
        key = self._key(spec)
        if key not in self._resolved:
            self._resolved[key] = resolve_positions(
                spec, self.tokens, self.mask, encode_word=self.encode_word, describe=self.describe
            )
        return self._resolved[key]

    def gather_index(self, t: Tensor, spec: PositionSpec) -> Tensor:
        """The ``gather`` index along dim 1 of ``t`` for a selector (cached per device and shape)."""
        key = (self._key(spec), t.device, t.shape[2:])
        idx = self._index.get(key)
        if idx is None:
            pos, _ = self.resolve(spec)
            idx = pos.clamp(min=0).to(t.device)
            idx = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            self._index[key] = idx
        return idx

    def select(self, t: Tensor, spec: PositionSpec) -> Tensor:
        """Keep only the selected positions of ``t`` (``[batch, seq, ...]`` -> ``[batch, k, ...]``)."""
        if isinstance(spec, str) and spec == "all":
            return t
        return t.gather(1, self.gather_index(t, spec))
