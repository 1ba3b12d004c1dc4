"""Aligning two models that do not share a tokenizer (seed 002, issue 17): words both tokenizers
can spell, the pooled embedding row of each word, word-level contextual states of the same
sentences, layers paired by relative depth, and retrieval (NN, CSLS, inverted softmax) computed
block by block, so no vocabulary x vocabulary matrix is ever held.

    >>> import numpy as np
    >>> Q = np.eye(3); T = np.eye(3)[[2, 0, 1]]
    >>> retrieval_ranks(Q, T, gold=np.array([1, 2, 0])).tolist()
    [0, 0, 0]
    >>> depth_pairing(4, 2)
    [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float, Int, Real

from .._errors import InputError, choices
from ._inputs import as_array
from ._tables import FrameMixin, long_frame

__all__ = [
    "POOLING",
    "Neighbors",
    "RetrievalPrecision",
    "WordAlignment",
    "WordStates",
    "align_words",
    "word_states",
    "common_occurrences",
    "depth_pairing",
    "nearest_neighbors",
    "retrieval_ranks",
    "retrieval_precision",
]

Array = Any
POOLING = ("single", "last", "first", "mean")
METHODS = ("nn", "csls", "isf")
#: bytes one block of scores may take (queries-block x targets); 32 MiB keeps the working set far
#: below the embedding matrices themselves
BLOCK_BYTES = 32 * 2**20
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: the unit both tokenizers are compared on


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLING:
        raise InputError(f"unknown pooling {pooling!r}; choose one of {choices(POOLING)}")


def _fast(tok: Any, side: str) -> Any:
    if tok is None:
        raise InputError(f"model {side} has no tokenizer; word alignment needs one on each side")
    if not getattr(tok, "is_fast", False):
        raise InputError(
            f"the tokenizer of model {side} ({type(tok).__name__}) is not a fast (Rust) tokenizer; "
            "word alignment needs character offsets (return_offsets_mapping)"
        )
    return tok


# ------------------------------------------------------------------------------- shared words
@dataclass(frozen=True, eq=False)
class WordAlignment:
    """Words both tokenizers spell, with the token ids each one uses for the word as it appears
    inside running text (after a space: ``"a her"`` -> the pieces covering ``her``).

    ``pieces_a[i]`` / ``pieces_b[i]``: the ids of word ``words[i]`` on each side; with
    ``pooling="single"`` every word is one token on both sides. ``dropped`` counts the candidate
    words left out, by reason (``examples`` holds a few of each).
    """

    words: list[str]
    pieces_a: list[tuple[int, ...]]
    pieces_b: list[tuple[int, ...]]
    pooling: str
    n_candidates: int
    dropped: dict[str, int]
    examples: dict[str, list[str]]
    names: tuple[str, str] = ("A", "B")

    def __len__(self) -> int:
        return len(self.words)

    @property
    def n_multi_piece(self) -> int:
        """Shared words that are more than one token on at least one side (pooled)."""
        return sum(len(a) > 1 or len(b) > 1 for a, b in zip(self.pieces_a, self.pieces_b))

    def rows(self, E: Real[Array, "vocab d"], side: str) -> Float[np.ndarray, "word d"]:
        """One float64 row per shared word from embedding matrix ``E`` of ``side`` (``"a"`` or
        ``"b"``), pooled over its pieces by ``pooling``. Only the rows needed are copied, never E."""
        if side not in ("a", "b"):
            raise InputError(f"side must be 'a' or 'b', got {side!r}")
        pieces = self.pieces_a if side == "a" else self.pieces_b
        return pool_rows(E, pieces, self.pooling)

    def summary(self) -> str:
        """One sentence for a report."""
        a, b = self.names
        drops = "; ".join(f"{n} {why}" for why, n in self.dropped.items() if n) or "none"
        rule = ("one token on both sides" if self.pooling == "single"
                else f"multi-piece words pooled by their {self.pooling} piece" if self.pooling != "mean"
                else "multi-piece words pooled by the mean of their pieces")
        return (f"{len(self.words)} words shared by {a} and {b} ({rule}; "
                f"{self.n_multi_piece} pooled) out of {self.n_candidates} candidates; dropped: {drops}.")

    def to_frame(self) -> pd.DataFrame:
        """Long table (``layer`` = -1), group ``words``: candidates, shared, pooled and each drop
        reason (``dropped: <reason>``) with its count."""
        cols = {("words", "candidates"): [self.n_candidates], ("words", "shared"): [len(self.words)],
                ("words", "pooled"): [self.n_multi_piece]}
        cols |= {("words", f"dropped: {why}"): [n] for why, n in self.dropped.items()}
        return long_frame(cols, layers=[-1])

    def table(self) -> pd.DataFrame:
        """The counts for a report: shared, pooled, and each drop reason with examples."""
        rows = [{"what": "candidate words", "count": self.n_candidates, "examples": "-"},
                {"what": "shared", "count": len(self.words), "examples": " ".join(self.words[:8])},
                {"what": "shared, pooled from several pieces", "count": self.n_multi_piece, "examples": "-"}]
        rows += [{"what": f"dropped: {why}", "count": n, "examples": " ".join(self.examples.get(why, [])[:6]) or "-"}
                 for why, n in self.dropped.items()]
        return pd.DataFrame(rows)


def pool_rows(E: Any, pieces: Sequence[Sequence[int]], pooling: str) -> np.ndarray:
    """Rows of ``E`` (numpy or torch ``[vocab, d]``) for each id tuple, pooled by ``pooling``."""
    _check_pooling(pooling)
    if not len(pieces):
        return np.zeros((0, int(E.shape[1])))
    if pooling in ("single", "last", "first"):
        idx = np.array([p[-1] if pooling != "first" else p[0] for p in pieces])
        if pooling == "single" and any(len(p) != 1 for p in pieces):
            raise InputError("pooling='single' got multi-piece words; choose 'last', 'first' or 'mean'")
        return as_array(E[idx])
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    block = as_array(E[flat])
    return np.add.reduceat(block, starts, axis=0) / np.array([len(p) for p in pieces])[:, None]


def _candidates(tok: Any) -> set[str]:
    """Alphabetic strings that decode from a single token (leading/trailing spaces stripped)."""
    n = len(tok)
    special = set(getattr(tok, "all_special_ids", []) or [])
    out = set()
    for i, s in enumerate(tok.batch_decode([[i] for i in range(n)])):
        w = s.strip()
        if i not in special and w.isalpha():
            out.add(w)
    return out


def _word_pieces(tok: Any, words: list[str], prefix: str) -> list[tuple[tuple[int, ...], str | None]]:
    """For each word: the ids covering it when it follows ``prefix`` and a space, and a drop
    reason (``None`` if fine): unknown token, a piece shared with the prefix, or a normaliser
    that changes the word (case folding, accent stripping)."""
    texts = [f"{prefix} {w}" for w in words]
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    unk = getattr(tok, "unk_token_id", None)
    start = len(prefix) + 1
    out = []
    for w, t, ids, offs in zip(words, texts, enc["input_ids"], enc["offset_mapping"]):
        end = start + len(w)
        # the word's tokens: those overlapping it or the space before it (a lone "Ġ"/"▁" piece
        # belongs to the word it precedes, so "Ġ" + "ent" is two pieces, never the single "ent")
        mine = [(i, s, e) for i, (s, e) in zip(ids, offs) if e > start - 1 and s < end and e > s]
        pieces = tuple(i for i, _, _ in mine)
        why = None
        if not pieces:
            why = "no token covers it"
        elif any((t[s:start] + t[end:e]).strip() for _, s, e in mine):
            why = "merged with the preceding text"
        elif unk is not None and unk in pieces:
            why = "unknown token"
        elif tok.decode(list(pieces)).strip() != w:
            why = "changed by the normaliser (case, accents)"
        out.append((pieces, why))
    return out


def align_words(
    tokenizer_a: Any,
    tokenizer_b: Any,
    *,
    pooling: str = "single",
    words: Sequence[str] | None = None,
    prefix: str = "a",
    names: tuple[str, str] = ("A", "B"),
) -> WordAlignment:
    """The words two tokenizers share, read from decoded strings, not token ids.

    Candidates are the alphabetic strings any single token of either tokenizer decodes to (or
    ``words``). Each is encoded the way it appears inside running text, after ``prefix`` and a
    space, so every word carries the same leading-space convention (GPT-2's ``Ġher``, Llama's
    ``▁her``, BERT's word-initial ``her``). ``pooling="single"`` keeps words that are one token on
    both sides; ``"last"``, ``"first"`` or ``"mean"`` also keep words split into several pieces
    and pool their rows by that rule. A word is dropped (and counted, by reason) when a side splits
    it (single only), does not know it, or its normaliser changes it; two words that land on the
    very same pieces on both sides keep only the first.

    >>> from transformers import AutoTokenizer   # doctest: +SKIP
    >>> al = align_words(tok_gpt2, tok_llama, pooling="last")  # doctest: +SKIP
    >>> al.summary()  # doctest: +SKIP
    '8123 words shared by A and B (...)'
    """
    _check_pooling(pooling)
    ta, tb = _fast(tokenizer_a, names[0]), _fast(tokenizer_b, names[1])
    cand = sorted(set(words) if words is not None else _candidates(ta) | _candidates(tb))
    if not cand:
        raise InputError("no candidate words: neither tokenizer decodes a token to letters only")
    pa, pb = _word_pieces(ta, cand, prefix), _word_pieces(tb, cand, prefix)
    dropped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}

    def drop(why: str, w: str) -> None:
        dropped[why] = dropped.get(why, 0) + 1
        if len(examples.setdefault(why, [])) < 8:
            examples[why].append(w)

    keep_w, keep_a, keep_b, seen = [], [], [], set()
    for w, (ida, why_a), (idb, why_b) in zip(cand, pa, pb):
        if why_a or why_b:
            drop(f"{names[0]}: {why_a}" if why_a else f"{names[1]}: {why_b}", w)
            continue
        if pooling == "single" and (len(ida) > 1 or len(idb) > 1):
            side = "both" if len(ida) > 1 and len(idb) > 1 else names[0] if len(ida) > 1 else names[1]
            drop(f"split into several tokens by {side}", w)
            continue
        if (ida, idb) in seen:
            drop("same tokens as another word on both sides", w)
            continue
        seen.add((ida, idb))
        keep_w.append(w)
        keep_a.append(ida)
        keep_b.append(idb)
    return WordAlignment(keep_w, keep_a, keep_b, pooling, len(cand), dropped, examples, tuple(names))


# ------------------------------------------------------------------------ blockwise retrieval
def _unit(X: Any) -> np.ndarray:
    A = as_array(X, dtype=None)
    if not np.issubdtype(A.dtype, np.floating):
        A = A.astype(np.float64)
    n = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.where(n > 0, n, 1).astype(A.dtype)


def _block(n_cols: int, itemsize: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise InputError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    return max(1, BLOCK_BYTES // max(1, n_cols * itemsize))


@dataclass(frozen=True, eq=False, repr=False)
class Neighbors(FrameMixin):
    """The ``k`` nearest targets of each query, best first: ``cosines`` and ``indices``, both
    ``[n_queries, k]``."""

    cosines: np.ndarray
    indices: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """Long table, one group per query (``query0``...), statistics ``cosine_1``, ``index_1``
        ... by rank; ``layer`` = -1 (not per layer)."""
        n, k = self.cosines.shape
        cols = {(f"query{q}", f"{what}_{j + 1}"): [arr[q, j]]
                for q in range(n) for j in range(k)
                for what, arr in (("cosine", self.cosines), ("index", self.indices))}
        return long_frame(cols, layers=[-1])


def nearest_neighbors(
    queries: Real[Array, "n_q d"],
    targets: Real[Array, "n_t d"],
    k: int = 1,
    *,
    block_rows: int | None = None,
) -> Neighbors:
    """The ``k`` targets of highest cosine for each query, best first (:class:`Neighbors`:
    ``cosines`` and ``indices``), computed ``block_rows`` queries at a time (default: a block of
    scores fits in 32 MiB).

    >>> import numpy as np
    >>> nearest_neighbors(np.eye(2), np.array([[0, 1.0], [1, 0.1]])).indices.ravel().tolist()
    [1, 0]
    """
    Q, T = _unit(queries), _unit(targets)
    k = int(min(k, T.shape[0]))
    if k < 1:
        raise InputError(f"k must be >= 1 and there must be targets, got k={k}, {T.shape[0]} targets")
    b = _block(T.shape[0], T.dtype.itemsize, block_rows)
    vals = np.empty((Q.shape[0], k), dtype=np.float64)
    idx = np.empty((Q.shape[0], k), dtype=np.int64)
    for s in range(0, Q.shape[0], b):
        S = Q[s : s + b] @ T.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.tile(np.arange(S.shape[1]), (S.shape[0], 1))
        pv = np.take_along_axis(S, part, 1)
        order = np.argsort(-pv, axis=1, kind="stable")
        idx[s : s + b] = np.take_along_axis(part, order, 1)
        vals[s : s + b] = np.take_along_axis(pv, order, 1)
    return Neighbors(vals, idx)


def _topk_mean(A: np.ndarray, B: np.ndarray, k: int, b: int) -> np.ndarray:
    """Mean of the ``k`` highest cosines of each row of A among the rows of B (both unit)."""
    out = np.empty(A.shape[0], dtype=np.float64)
    k = int(min(k, B.shape[0]))
    for s in range(0, A.shape[0], b):
        S = A[s : s + b] @ B.T
        out[s : s + b] = np.partition(S, S.shape[1] - k, axis=1)[:, -k:].mean(1)
    return out


def _col_logsumexp(T: np.ndarray, S: np.ndarray, beta: float, b: int) -> np.ndarray:
    """log sum_s exp(beta cos(s, t)) for each target row t, over all source rows s."""
    from scipy.special import logsumexp

    out = np.empty(T.shape[0], dtype=np.float64)
    for s in range(0, T.shape[0], b):
        out[s : s + b] = logsumexp(beta * (T[s : s + b] @ S.T).astype(np.float64), axis=1)
    return out


def retrieval_ranks(
    queries: Real[Array, "n_q d"],
    targets: Real[Array, "n_t d"],
    gold: Int[Array, " n_q"] | None = None,
    *,
    method: str = "nn",
    sources: Real[Array, "n_s d"] | None = None,
    csls_k: int = 10,
    isf_beta: float = 30.0,
    block_rows: int | None = None,
) -> Int[np.ndarray, " n_q"]:
    """For each query, how many targets score strictly above its gold target (0 = retrieved
    first), by cosine (``"nn"``), CSLS (2 cos(q, t) - r_T(q) - r_S(t), r the mean cosine to the
    ``csls_k`` nearest cross-space neighbours; r_T(q) is the same for every target of q so it does
    not change q's ranking) or the inverted softmax (``"isf"``: beta cos(q, t) - log sum over
    sources s of exp(beta cos(s, t))). ``sources`` are the mapped source-space rows the target
    side's hubness is measured against (default: the queries). Scores are computed block by
    block: memory is one block of scores plus the unit-normalised inputs, never n_q x n_t.

    >>> import numpy as np
    >>> retrieval_ranks(np.eye(3), np.eye(3), method="csls", csls_k=1).tolist()
    [0, 0, 0]
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {choices(METHODS)}")
    Q, T = _unit(queries), _unit(targets)
    if Q.shape[1] != T.shape[1]:
        raise InputError(f"queries have {Q.shape[1]} features but targets {T.shape[1]}; map them first")
    g = np.arange(Q.shape[0]) if gold is None else np.asarray(gold).astype(np.int64)
    if g.shape != (Q.shape[0],) or (g.size and (g.max() >= T.shape[0] or g.min() < 0)):
        raise InputError(f"gold must hold one target index in [0, {T.shape[0]}) per query "
                         f"({Q.shape[0]}), got shape {g.shape}")
    S_src = Q if sources is None else _unit(sources)
    bt = _block(max(S_src.shape[0], 1), T.dtype.itemsize, block_rows)
    if method == "csls":
        penalty = _topk_mean(T, S_src, csls_k, bt)  # r_S(t)
        scale = 2.0
    elif method == "isf":
        penalty = _col_logsumexp(T, S_src, isf_beta, bt)
        scale = float(isf_beta)
    else:
        penalty, scale = np.zeros(T.shape[0]), 1.0
    b = _block(T.shape[0], T.dtype.itemsize, block_rows)
    ranks = np.empty(Q.shape[0], dtype=np.int64)
    for s in range(0, Q.shape[0], b):
        S = scale * (Q[s : s + b] @ T.T).astype(np.float64) - penalty
        gs = S[np.arange(S.shape[0]), g[s : s + b]]
        ranks[s : s + b] = (S > gs[:, None]).sum(1)
    return ranks


def retrieval_precision(
    queries: Real[Array, "n_q d"],
    targets: Real[Array, "n_t d"],
    gold: Int[Array, " n_q"] | None = None,
    *,
    k: int = 1,
    methods: Sequence[str] = METHODS,
    **kwargs: Any,
) -> RetrievalPrecision:
    """precision@k by each method (:class:`RetrievalPrecision`; ``.precision`` maps ``"nn"``,
    ``"csls"``, ``"isf"`` to a float), computed blockwise.

    >>> import numpy as np
    >>> retrieval_precision(np.eye(3), np.eye(3)).precision
    {'nn': 1.0, 'csls': 1.0, 'isf': 1.0}
    """
    prec = {m: float((retrieval_ranks(queries, targets, gold, method=m, **kwargs) < k).mean())
            for m in methods}
    return RetrievalPrecision(prec, int(k), int(np.shape(queries)[0]))


@dataclass(frozen=True, eq=False, repr=False)
class RetrievalPrecision(FrameMixin):
    """precision@``k`` of retrieving each query's gold target, by method (``precision[method]``:
    ``"nn"``, ``"csls"``, ``"isf"``), over ``n_queries`` queries."""

    precision: dict[str, float]
    k: int
    n_queries: int

    def __getitem__(self, method: str) -> float:
        if method not in self.precision:
            raise KeyError(f"no method {method!r}; computed: {choices(self.precision)}")
        return self.precision[method]

    def to_frame(self) -> pd.DataFrame:
        """Long table: one group per method, statistic ``p_at_k``; ``layer`` = -1."""
        return long_frame({(m, "p_at_k"): [v] for m, v in self.precision.items()}
                          | {("retrieval", "k"): [self.k], ("retrieval", "n_queries"): [self.n_queries]},
                          layers=[-1])


# ------------------------------------------------------------------- word states in context
@dataclass(frozen=True, eq=False)
class WordStates:
    """Each word occurrence's state at every layer: ``states[layer, occurrence, d]``, keyed by
    ``keys[occurrence] = (sentence, word index, word)``; ``skipped`` counts the words and
    sentences left out, by reason."""

    states: np.ndarray
    keys: list[tuple[int, int, str]]
    pooling: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_states(self) -> int:
        return int(self.states.shape[0])


def _offsets(tok: Any, text: str, seq: list[int]) -> list[tuple[int, int]] | None:
    """Character span of every position of ``seq`` (the model's own ids for ``text``): the
    tokenizer's offsets for the content ids, found inside ``seq``; special tokens get (0, 0)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    n = len(ids)
    for start in range(0, len(seq) - n + 1):
        if seq[start : start + n] == ids:
            return [(0, 0)] * start + offs + [(0, 0)] * (len(seq) - start - n)
    return None


def word_states(
    model: Any,
    sentences: Sequence[str],
    *,
    pooling: str = "last",
    batch_size: int = 16,
    progress: bool = False,
) -> WordStates:
    """Run ``sentences`` through ``model`` (one forward pass per batch, ``tp.Residual``) and take
    each word's residual state at every layer, pooled over the word's tokens by ``pooling``
    (``"last"``, ``"first"``, ``"mean"``; ``"single"`` keeps one-token words only). Words are runs
    of letters, located by character offsets, so two models with different tokenizers give
    states for the same word occurrences. Words on position 0 (no BOS) are left out.
    """
    from .._runner import run
    from .._tl.adapter import adapter_for
    from ..capture import Residual

    _check_pooling(pooling)
    adapter = adapter_for(model)
    tok = _fast(adapter.hf_tokenizer, str(adapter.meta.model_name))
    seqs, spans, sent_ids, skipped = [], [], [], {}

    def skip(why: str, n: int = 1) -> None:
        skipped[why] = skipped.get(why, 0) + n

    for si, text in enumerate(sentences):
        seq = adapter.encode(text)
        offs = _offsets(tok, text, seq)
        if offs is None:
            skip("sentences whose tokens the tokenizer's offsets do not match")
            continue
        seqs.append(seq)
        spans.append(offs)
        sent_ids.append(si)
    if not seqs:
        raise InputError(f"none of the {len(sentences)} sentences could be aligned to "
                         f"{adapter.meta.model_name}'s tokens")
    res = run(model, seqs, Residual(), batch_size=batch_size, progress=progress)
    resid = res.residual.resid  # [state, batch, pos, d]
    keys, cols = [], []
    for b, (si, offs) in enumerate(zip(sent_ids, spans)):
        text = sentences[si]
        for wi, m in enumerate(_WORD.finditer(text)):
            s, e = m.span()
            lead = len(text[:s]) - len(text[:s].rstrip())  # whitespace before the word is its own
            pos = [p for p, (a, z) in enumerate(offs) if z > a and z > s - lead and a < e]
            if any((text[offs[p][0]:s] + text[e:offs[p][1]]).strip() for p in pos):
                skip("words sharing a token with the next or previous word")
                continue
            if not pos or 0 in pos:
                skip("words on the first position (no BOS)" if pos else "words no token covers")
                continue
            if pooling == "single" and len(pos) > 1:
                skip("multi-token words (pooling='single')")
                continue
            keys.append((si, wi, m.group()))
            cols.append((b, pos))
    L = resid.shape[0]
    out = np.empty((L, len(cols), resid.shape[-1]), dtype=np.float64)
    for j, (b, pos) in enumerate(cols):
        if pooling == "mean":
            out[:, j] = resid[:, b, pos].double().mean(1).numpy()
        else:
            out[:, j] = resid[:, b, pos[0] if pooling == "first" else pos[-1]].double().numpy()
    return WordStates(out, keys, pooling, skipped)


def common_occurrences(a: WordStates, b: WordStates) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``a`` and ``b`` of the word occurrences both have (same sentence, word, text)."""
    where_b = {k: j for j, k in enumerate(b.keys)}
    pairs = [(i, where_b[k]) for i, k in enumerate(a.keys) if k in where_b]
    ia = np.array([p[0] for p in pairs], dtype=np.int64)
    ib = np.array([p[1] for p in pairs], dtype=np.int64)
    return ia, ib


def depth_pairing(layers_a: int, layers_b: int) -> list[tuple[int, int]]:
    """Pair each residual state 0..layers_a of model A with the state of model B at the same
    relative depth: j = round(i * layers_b / layers_a) (state 0 = embeddings, the last = output
    of the last block). Equal depths pair i with i."""
    if layers_a < 1 or layers_b < 1:
        raise InputError(f"both models need at least one layer, got {layers_a} and {layers_b}")
    return [(i, int(np.floor(i * layers_b / layers_a + 0.5))) for i in range(layers_a + 1)]
