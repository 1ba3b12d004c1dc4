"""Angles between residual-stream vectors: the stable primitive, trajectories across layers with
target / word-before / random-control conditions (seed 003, lecture 225), and within-layer angles
between tokens (lecture 226).

    >>> import numpy as np
    >>> float(angle(np.array([1.0, 0.0]), np.array([1.0, 1.0])))
    45.0
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Real

from .._errors import InputError, PositionError, choices
from ._inputs import States, as_array, as_states, included_mask, warn_nan
from ._stats import (
    BootstrapCI,
    LayerSummary,
    PairedTest,
    SignFlipTest,
    bootstrap_ci,
    layer_summary,
    paired_test,
    sign_flip_test,
)
from ._stream import LayerMoments, note_mode
from ._tables import FrameMixin, group_columns, long_frame

__all__ = [
    "angle",
    "layer_angles",
    "angle_trajectory",
    "AngleTrajectory",
    "within_layer_angles",
    "WithinLayerAngles",
    "AngleAccumulator",
    "CONTROLS",
    "RotationDecomposition",
    "rotation_decomposition",
    "resolve_targets",
]

Array = np.ndarray | torch.Tensor
CONTROLS = ("course", "clean", "layer_matched")
_UNITS = ("deg", "rad")


def _angle(u: np.ndarray, v: np.ndarray, units: str = "deg") -> tuple[np.ndarray, int]:
    nu = np.linalg.norm(u, axis=-1, keepdims=True)
    nv = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        uh, vh = u / nu, v / nv
        th = 2.0 * np.arctan2(np.linalg.norm(uh - vh, axis=-1), np.linalg.norm(uh + vh, axis=-1))
    bad = ~np.isfinite(th) | (nu[..., 0] == 0) | (nv[..., 0] == 0)
    th = np.where(bad, np.nan, th)
    if units == "deg":
        th = np.degrees(th)
    return np.asarray(th, float), int(bad.sum())


def angle(
    u: Real[Array, "*#batch d"],
    v: Real[Array, "*#batch d"],
    *,
    units: str = "deg",
) -> Float[np.ndarray, ...]:
    """Angle between ``u`` and ``v`` along the last dim, broadcasting the rest, in float64.

    Uses ``2*atan2(|u^-v^|, |u^+v^|)``, exact for tiny and near-180 degree angles where
    ``acos`` of a rounded cosine is not. Zero or non-finite vectors give NaN and a warning.

    >>> import numpy as np
    >>> angle(np.eye(3), np.array([1.0, 0.0, 0.0])).tolist()
    [0.0, 90.0, 90.0]
    """
    if units not in _UNITS:
        raise InputError(f"unknown units {units!r}; choose one of {choices(_UNITS)}")
    th, n_bad = _angle(as_array(u), as_array(v), units)
    warn_nan(n_bad, "angles")
    return th


def _consecutive(st: States) -> tuple[np.ndarray, int]:
    """[L, B, P] angle between x_l and x_(l-1) at each slot; NaN at invalid slots."""
    th, _ = _angle(st.values[1:], st.values[:-1])
    th = np.where(st.mask[None], th, np.nan)
    n_bad = int((~np.isfinite(th) & st.mask[None]).sum())
    return th, n_bad


def layer_angles(
    data: Any, mask: Any = None, *, units: str = "deg"
) -> Float[np.ndarray, "layer batch pos"]:
    """Angle between each slot's consecutive states ``x_(l-1), x_l`` (l = 1..L): ``[L, B, P]``,
    NaN where the mask is False. ``data`` is a residual capture or ``[L+1, B, P, d]``.

    >>> import numpy as np
    >>> layer_angles(np.random.default_rng(0).normal(size=(3, 1, 2, 4))).shape
    (2, 1, 2)
    """
    st = as_states(data, mask)
    th, n_bad = _consecutive(st)
    warn_nan(n_bad, "angles")
    return th if units == "deg" else np.radians(th)


def _target_of(targets: Any) -> Any:
    """A token string becomes ``Target(word)``; a ``Target`` stays; anything else is slots."""
    from ..capture._positions import Target

    if isinstance(targets, str):
        return Target(targets)
    return targets


def target_slot_lists(st: States, target: Any, str_tokens: Any = None) -> list[list[int]]:
    """Slots of ``target`` (a :class:`~tlprobes.Target`) in each sequence, resolved by
    :func:`tlprobes.capture._positions.target_indices` exactly as a probe's ``Target`` is: over
    the prompt's real tokens, offsets from the word's boundaries, ``piece`` as asked. ``[]`` where
    the word (or the offset token) is absent from a sequence or was not captured."""
    from ..capture._positions import target_indices

    B, P = st.mask.shape
    if isinstance(target.word, int):
        if st.tokens is None:
            raise PositionError(f"target token id {target.word} needs token ids; pass a capture")
        toks: Any = np.asarray(st.tokens).tolist()
        word: Any = [target.word]
    else:
        toks = str_tokens if str_tokens is not None else st.str_tokens
        if toks is None:
            raise PositionError(
                f"target {target.word!r} is a word but no str_tokens were given; pass "
                "str_tokens=... or integer target slots"
            )
        word = target.word
    if st.positions is not None:
        pos = np.asarray(st.positions)
    else:  # plain arrays: slot j is position j
        pos = np.broadcast_to(np.arange(P), (B, P))
    am = np.asarray(st.attention_mask, bool) if st.attention_mask is not None else None
    out: list[list[int]] = []
    for b in range(B):
        slot_of = {int(pos[b, j]): j for j in range(P) if st.mask[b, j]}
        if am is not None and b < am.shape[0]:
            real = np.flatnonzero(am[b]).tolist()  # the prompt's own tokens, not only the kept ones
        else:
            real = sorted(slot_of)
        row = toks[b]
        seq = [row[k] if 0 <= k < len(row) else None for k in real]
        try:
            picked = target_indices(seq, word, target, where=f"sequence {b}")
        except PositionError:
            out.append([])
            continue
        slots = [slot_of.get(real[i], -1) for i in picked[0]]
        out.append(slots if all(j >= 0 for j in slots) else [])
    return out


def resolve_targets(
    st: States, targets: Any, str_tokens: Any = None
) -> np.ndarray:
    """Target slot per sequence ``[B]`` (-1 where absent) from a word (``" her"``, resolved like
    ``tp.Target(" her")``: first occurrence, last piece of a multi-token word), a
    :class:`~tlprobes.Target`, an int array of slots, or a per-sequence list."""
    B = st.mask.shape[0]
    tgt = _target_of(targets)
    if not isinstance(tgt, (list, tuple, np.ndarray)) and hasattr(tgt, "word"):
        if getattr(tgt, "piece", "last") == "mean" and tgt.offset == 0:
            raise PositionError(
                "piece='mean' stands for several slots; this analyzer needs one slot per sequence "
                "(use piece='last' or 'first', or angle_trajectory, which averages the pieces)"
            )
        lists = target_slot_lists(st, tgt, str_tokens)
        out = np.array([row[0] if row else -1 for row in lists], dtype=int)
        if (out < 0).all():
            raise PositionError(
                f"target {tgt.word!r} occurs in no sequence (check the leading space)"
            )
        return out
    t = np.asarray(as_array(targets, dtype=None)).astype(int).reshape(-1)
    if t.shape != (B,):
        raise PositionError(f"targets must give one slot per sequence ({B}), got shape {t.shape}")
    P = st.mask.shape[1]
    if ((t >= P) | (t < -1)).any():
        raise PositionError(
            f"target slots {t.tolist()} out of range; valid: -1 (absent) or 0..{P - 1}"
        )
    t = np.where((t >= 0) & st.mask[np.arange(B), np.clip(t, 0, P - 1)], t, -1)
    return t


@dataclass(frozen=True, eq=False, repr=False)
class AngleTrajectory(FrameMixin):
    """Angles (degrees) between a token's states at consecutive layers, per condition.

    ``angles[cond]`` is ``[L, B]`` (row l is the angle x_(l-1) -> x_l, ``layers`` = 1..L), NaN where
    the condition is unavailable for that sequence (``valid[cond]`` False) or the vectors are zero.
    ``tests`` holds paired t-tests across sequences: "target-before" always, "target-control"
    for the clean and layer-matched controls (the course plots its control and never tests it).
    ``permutation`` / ``bootstrap`` hold, for the same pairs, an exact or Monte Carlo sign-flip
    test and a bootstrap CI of the mean difference over sequences (no normality assumed).
    ``control_indices`` ``[L, B, 4]`` = (layer_u, slot_u, layer_v, slot_v) of each control draw.
    ``target_slots`` / ``before_slots`` ``[B]``: the slot of the target (its last piece when
    ``piece="mean"`` averages several) and of the token before the word (-1 = absent).
    ``settings["protocol"]`` names every choice behind the numbers (BOS, final state, control,
    correction, batch composition).
    """

    layers: np.ndarray
    angles: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    summary: dict[str, LayerSummary]
    tests: dict[str, PairedTest]
    target_slots: np.ndarray
    control_indices: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    permutation: dict[str, SignFlipTest] = field(default_factory=dict)
    bootstrap: dict[str, BootstrapCI] = field(default_factory=dict)
    before_slots: np.ndarray | None = None

    def to_frame(self) -> pd.DataFrame:
        """Long table: layer, group (condition or test), statistic, value."""
        cols = {**group_columns(self.summary), **group_columns(self.tests)}
        for g, t in self.permutation.items():
            cols.update(t.columns(g))
        for g, t in self.bootstrap.items():
            cols.update(t.columns(g))
        return long_frame(cols, layers=self.layers)


def _draw_control(
    st: States, kind: str, rng: np.random.Generator, exclude_first: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Control angles [L, B] and indices [L, B, 4] (-1 where no draw was possible)."""
    L1, B, P, _ = st.values.shape
    L = L1 - 1
    if kind == "course":
        _check_course_rows(st)
    idx = np.full((L, B, 4), -1)
    elig = included_mask(st, exclude_first)
    for b in range(B):
        slots = np.flatnonzero(elig[b])
        for r in range(L):
            if kind == "course":  # hidden layers 1..L, any slot of the padded row
                idx[r, b] = (rng.integers(1, L + 1), rng.integers(P), rng.integers(1, L + 1),
                             rng.integers(P))
            elif slots.size >= 2:
                i, j = rng.choice(slots, size=2, replace=False)
                lu, lv = (r, r + 1) if kind == "clean" else (r + 1, r + 1)
                idx[r, b] = (lu, i, lv, j)
    ok = idx[..., 0] >= 0
    bi = np.broadcast_to(np.arange(B)[None], (L, B))
    safe = np.where(ok[..., None], idx, 0)
    u = st.values[safe[..., 0], bi, safe[..., 1]]
    v = st.values[safe[..., 2], bi, safe[..., 3]]
    th, _ = _angle(u, v)
    return np.where(ok, th, np.nan), idx


def _check_course_rows(st: States) -> None:
    """The course's control draws any position of each prompt's padded row: every slot of every
    row must hold an activation the model computed, in the prompt's own order."""
    B, P = st.mask.shape
    if st.positions is not None and st.attention_mask is not None:
        pos = np.asarray(st.positions)
        real = np.asarray(st.attention_mask, bool)
        if pos.shape[1] != real.shape[1] or (pos[st.mask] != np.nonzero(st.mask)[1]).any():
            raise InputError(
                "control='course' draws any position of each padded prompt, so it needs every "
                "position captured: use tp.Residual() (positions='all'), not a position selector"
            )
    if st.row_width is not None:
        short = np.flatnonzero(np.asarray(st.row_width) < P)
        widths = sorted(set(np.asarray(st.row_width)[short].tolist()))
        if short.size:
            raise InputError(
                f"control='course' draws any position of each prompt's padded row, but prompts "
                f"{short[:5].tolist()} ran in batches {widths} "
                f"tokens wide, padded to {P} only when batches were merged (those slots hold no "
                "activation); run with tp.run(..., pad_to='longest') (or one batch) so every row "
                "is padded as one batch of all prompts would be"
            )


def _mean_vectors(values: np.ndarray, lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``[L+1, B, d]`` mean over each sequence's slots (zeros where none) and ``[B]`` ok."""
    L1, B, _, d = values.shape
    out = np.zeros((L1, B, d))
    ok = np.zeros(B, bool)
    for b, slots in enumerate(lists):
        if slots:
            out[:, b] = values[:, b, slots].mean(1)
            ok[b] = True
    return out, ok


def _before_target(tgt: Any) -> Any:
    """The token just before the target: before the word (offset 0), else one further back."""
    if tgt.offset == 1:
        return replace(tgt, offset=0, piece="last")
    return replace(tgt, offset=tgt.offset - 1 if tgt.offset != 0 else -1)


_CONTROL_WORDS = {
    "course": "course: two independent draws per (sentence, layer), each a layer in 1..L and any "
              "position of the padded row, padding included",
    "clean": "clean: angle(x_(l-1)[i], x_l[j]) for two distinct valid non-first slots i != j",
    "layer_matched": "layer-matched: angle(x_l[i], x_l[j]) for two distinct valid non-first slots",
}


def angle_trajectory(
    data: Any,
    targets: Any,
    *,
    mask: Any = None,
    str_tokens: Any = None,
    control: str = "clean",
    exclude_first: bool = True,
    seed: int = 0,
    alpha: float | int = 0.05,
    bonferroni: str = "bonferroni",
    mode: str | None = None,
    robust: bool = True,
    n_resamples: int = 9999,
) -> AngleTrajectory:
    """The seed-003 protocol: per-layer rotation of a target token, the word before it and a
    random control, with summaries, paired t-tests (Bonferroni + FDR-BH) and d_z effect sizes.

    ``data``: residual capture or ``[L+1, B, P, d]`` states; ``targets``: a word (e.g.
    ``" her"``) or a :class:`~tlprobes.Target`, resolved exactly as the probes resolve
    ``tp.Target`` (first occurrence, the word's last piece, ``piece="mean"`` averages the pieces'
    vectors), or one slot per sequence (-1 = absent). "before" is the token just before the word.

    Controls, drawn once per (layer, sequence) with ``numpy.random.default_rng(seed)``:
    ``"course"`` replicates the course: two independent (layer in 1..L, any slot *including
    padding*) draws in the same sentence; ``"clean"`` is layer-matched and valid-only: two
    distinct valid slots i != j, angle(x_(l-1)[i], x_l[j]); ``"layer_matched"``: distinct valid
    slots at the same layer l (an anisotropy baseline). ``exclude_first`` keeps the first token
    out of the clean draws. ``bonferroni="bonferroni_states"`` uses m = L+1 like the course
    (the old spelling ``"course"`` is refused with this name). ``control="course"`` needs every padded position captured, with
    every prompt padded to one width (``tp.run(..., pad_to="longest")``); merge padding is refused.
    ``robust`` adds the sign-flip test and bootstrap CI (``n_resamples``, seeded with ``seed``).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 6, 5, 16))
    >>> res = angle_trajectory(x, np.full(6, 3))
    >>> res.angles["target"].shape, sorted(res.tests)
    ((3, 6), ['target-before', 'target-control'])
    """
    if control not in CONTROLS:
        raise InputError(f"unknown control {control!r}; choose one of {choices(CONTROLS)}")
    st = as_states(data, mask, mode=mode)
    L1, B, P, _ = st.values.shape
    L = L1 - 1
    if L < 1:
        raise InputError(f"need at least 2 states (x_0, x_1) on the layer axis, got {L1}")
    tgt = _target_of(targets)
    bi = np.arange(B)
    if not isinstance(tgt, (list, tuple, np.ndarray)) and hasattr(tgt, "word"):
        t_lists = target_slot_lists(st, tgt, str_tokens)
        if not any(t_lists):
            raise PositionError(
                f"target {tgt.word!r} occurs in no sequence (check the leading space)")
        b_lists = target_slot_lists(st, _before_target(tgt), str_tokens)
        b_lists = [bl if tl else [] for tl, bl in zip(t_lists, b_lists)]
    else:
        t = resolve_targets(st, targets, str_tokens)
        prev = np.where(t >= 0, t - 1, -1)
        ok_b = (prev >= 0) & st.mask[bi, np.clip(prev, 0, P - 1)]
        if st.positions is not None:
            pos = np.asarray(st.positions)
            ok_b &= pos[bi, np.clip(prev, 0, P - 1)] == pos[bi, np.clip(t, 0, P - 1)] - 1
        t_lists = [[int(j)] if j >= 0 else [] for j in t]
        b_lists = [[int(j)] if ok else [] for j, ok in zip(prev, ok_b)]
    t = np.array([tl[-1] if tl else -1 for tl in t_lists])
    prev = np.array([bl[0] if bl else -1 for bl in b_lists])
    tv, has_t = _mean_vectors(st.values, t_lists)
    bv, has_b = _mean_vectors(st.values, b_lists)
    tgt_th, _ = _angle(tv[1:], tv[:-1])
    bef_th, _ = _angle(bv[1:], bv[:-1])
    tgt_a = np.where(has_t[None], tgt_th, np.nan)
    bef = np.where(has_b[None], bef_th, np.nan)
    ctl, cidx = _draw_control(st, control, np.random.default_rng(seed), exclude_first)
    has_c = (cidx[..., 0] >= 0).all(0) & has_t  # paired with the sequences that have a target
    ctl = np.where(has_c[None], ctl, np.nan)
    angles = {"target": tgt_a, "before": bef, "control": ctl}
    valid = {"target": has_t, "before": has_b, "control": has_c}
    n_bad = sum(int((~np.isfinite(angles[k]) & valid[k][None]).sum()) for k in angles)
    warn_nan(n_bad, "trajectory angles")
    summary = {k: layer_summary(angles[k], valid[k]) for k in angles}
    pairs = {"target-before": (tgt_a, bef)}
    if control != "course":  # the course plots its control and never tests it
        pairs["target-control"] = (tgt_a, ctl)
    tests = {g: paired_test(x, y, alpha=alpha, bonferroni=bonferroni)
             for g, (x, y) in pairs.items()}
    perm: dict[str, SignFlipTest] = {}
    boot: dict[str, BootstrapCI] = {}
    if robust:
        for g, (x, y) in pairs.items():
            perm[g] = sign_flip_test(x, y, n_resamples=n_resamples, seed=seed,
                                     bonferroni=bonferroni)
            boot[g] = bootstrap_ci(x, y, n_resamples=n_resamples, seed=seed)
    bname = tests["target-before"].bonferroni
    m_words = "L+1 hidden states" if bname == "bonferroni_states" else "L tests"
    proto = dict(st.meta.get("protocol", {}))
    protocol = {
        "bos": proto.get("bos", "unknown (plain arrays)"),
        "final_state": proto.get("final_state", {"ln_f": "ln_f(x_L)", "raw": "raw x_L"}.get(
            str(st.meta.get("final_state")), "unknown (plain arrays)")),
        "control": _CONTROL_WORDS[control],
        "correction": (f"{bname}: p x {L + 1 if bname == 'bonferroni_states' else L} "
                       f"(m = {m_words}); "
                       "FDR-BH beside it"),
        "test": "paired t-test (scipy ttest_rel) of target vs before"
                + ("" if control == "course" else " and target vs control")
                + (f"; sign-flip permutation test and {n_resamples}-resample BCa bootstrap CI over "
                   "sequences" if robust else ""),
        "batch_composition": (
            f"{proto.get('n_prompts', B)} prompts; padded widths {proto['batch_widths']}"
            + (" (merged batches of different widths)" if proto.get("merge_padding") else "")
            + f", {proto.get('padding_side', '?')} padding"
            if "batch_widths" in proto else "unknown (plain arrays)"),
        "padding_states": (
            "" if control != "course" else
            "HF's own (TransformerBridge)" if st.meta.get("model_kind") == "TransformerBridge" else
            "HookedTransformer's: padding tokens get a zero positional embedding, so the padded "
            "states the course's control draws are not HF's"
            if st.meta.get("model_kind") == "HookedTransformer" else
            "unknown (plain arrays)"),
        "first_token": ("drawn like any position (the course's control)" if control == "course"
                        else "excluded from the control draws" if exclude_first else "included"),
    }
    settings = {
        "mode": st.mode, "control": control, "exclude_first": exclude_first, "seed": seed,
        "alpha": alpha, "bonferroni": bname, "units": "deg",
        "targets": repr(tgt) if hasattr(tgt, "word") else "slots",
        "final_state": st.meta.get("final_state", "unknown"), "meta": st.meta,
        "protocol": protocol,
    }
    return AngleTrajectory(np.arange(1, L + 1), angles, valid, summary, tests, t, cidx, settings,
                           perm, boot, prev)


@dataclass(frozen=True, eq=False, repr=False)
class WithinLayerAngles(FrameMixin):
    """Angles between tokens inside each layer (lecture 226), ``layers`` = 0..L.

    ``adjacent`` ``[L+1, B, P]``: angle between each valid slot and the previous valid slot (NaN
    at the first). ``target`` ``[L+1, B]``: target vs the slot before it; ``control`` ``[L+1, B]``:
    one random pair of distinct eligible non-target slots per sequence (``control_pairs`` [B, 2]).
    """

    layers: np.ndarray
    adjacent: np.ndarray
    target: np.ndarray | None
    control: np.ndarray
    control_pairs: np.ndarray
    summary: dict[str, LayerSummary]
    test: PairedTest | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols = group_columns(self.summary)
        if self.test is not None:
            cols.update(self.test.columns("target-control"))
        return long_frame(cols, layers=self.layers)


def within_layer_angles(
    data: Any,
    targets: Any = None,
    *,
    mask: Any = None,
    str_tokens: Any = None,
    exclude_first: bool = True,
    seed: int = 0,
    mode: str | None = None,
) -> WithinLayerAngles:
    """Angles between tokens at the same layer: adjacent valid tokens, target vs its previous
    token, and a random pair of distinct eligible slots (valid, not the target, not the first
    token when ``exclude_first``).

    >>> import numpy as np
    >>> r = within_layer_angles(np.random.default_rng(0).normal(size=(3, 2, 6, 8)))
    >>> r.adjacent.shape, r.control.shape
    ((3, 2, 6), (3, 2))
    """
    st = as_states(data, mask, mode=mode)
    L1, B, P, _ = st.values.shape
    x, m = st.values, st.mask
    elig = included_mask(st, exclude_first)
    adj = np.full((L1, B, P), np.nan)
    adj_ok = np.zeros((B, P), bool)
    for b in range(B):
        slots = np.flatnonzero(m[b])
        if exclude_first:
            slots = slots[elig[b, slots]]
        if slots.size >= 2:
            adj[:, b, slots[1:]] = _angle(x[:, b, slots[1:]], x[:, b, slots[:-1]])[0]
            adj_ok[b, slots[1:]] = True
    tgt_arr = None
    t = np.full(B, -1)
    if targets is not None:
        t = resolve_targets(st, targets, str_tokens)
        tgt = _target_of(targets)
        if hasattr(tgt, "word"):  # the token before the word, resolved like tp.Target(w, offset=-1)
            prev = np.array([r[0] if r else -1 for r in
                             target_slot_lists(st, _before_target(tgt), str_tokens)])
        else:
            prev = np.where(t >= 1, t - 1, -1)
        ok = (t >= 0) & (prev >= 0) & m[np.arange(B), np.clip(prev, 0, P - 1)]
        tc, pc_ = np.clip(t, 0, P - 1), np.clip(prev, 0, P - 1)
        th = _angle(x[:, np.arange(B), tc], x[:, np.arange(B), pc_])[0]
        tgt_arr = np.where(ok[None], th, np.nan)
    rng = np.random.default_rng(seed)
    pairs = np.full((B, 2), -1)
    for b in range(B):
        slots = np.flatnonzero(elig[b] & (np.arange(P) != t[b]))
        if slots.size >= 2:
            pairs[b] = np.sort(rng.choice(slots, size=2, replace=False))
    okc = pairs[:, 0] >= 0
    pc = np.where(okc[:, None], pairs, 0)
    ctl = _angle(x[:, np.arange(B), pc[:, 0]], x[:, np.arange(B), pc[:, 1]])[0]
    ctl = np.where(okc[None], ctl, np.nan)
    summary = {
        "adjacent": layer_summary(adj.reshape(L1, -1), adj_ok.reshape(-1)),
        "control": layer_summary(ctl, okc),
    }
    test = None
    if tgt_arr is not None:
        summary["target"] = layer_summary(tgt_arr, ok)
        test = paired_test(tgt_arr, ctl)
    settings = {"mode": st.mode, "exclude_first": exclude_first, "seed": seed, "units": "deg",
                "meta": st.meta}
    return WithinLayerAngles(np.arange(L1), adj, tgt_arr, ctl, pairs, summary, test, settings)


class AngleAccumulator(LayerMoments):
    """Streaming mean/SD/CI of the consecutive-layer angle per layer (and group).

    ``update`` takes a residual capture / ``[L+1, B, P, d]`` states, or a steps capture with
    ``.angle`` ``[L, B, P]``; ``merge`` adds another accumulator; ``compute`` summarises;
    ``state_dict`` / ``from_state_dict`` round-trip the state exactly.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 5, 8))
    >>> a, b = AngleAccumulator(), AngleAccumulator()
    >>> a.update(x[:, :2]); b.update(x[:, 2:])
    >>> a.merge(b).compute().summary["all"].n.tolist()  # 4 sequences x 4 non-first slots
    [16, 16]
    """

    def __init__(self, *, exclude_first: bool = True) -> None:
        super().__init__("angle", first_layer=1)
        self.settings = {"exclude_first": exclude_first, "units": "deg"}

    def update(  # type: ignore[override]
        self, data: Any, mask: Any = None, *, group: str = "all"
    ) -> None:
        """Fold one batch in."""
        if hasattr(data, "angle") and not hasattr(data, "shape"):
            st = as_states(data, mask, attr="angle", vector=False)
            th = np.where(st.mask[None], st.values, np.nan)
        else:
            st = as_states(data, mask)
            th, _ = _consecutive(st)
        ok = included_mask(st, self.settings["exclude_first"])
        n_bad = int((~np.isfinite(th) & ok[None]).sum())
        warn_nan(n_bad, "angles")
        note_mode(self.settings, st.mode)
        self._fold(th, ok[None], group)


@dataclass(frozen=True, eq=False, repr=False)
class RotationDecomposition(FrameMixin):
    """What attention and the MLP contribute to each token's rotation x_(l-1) -> x_l.

    Block l's step is exactly ``x_l - x_(l-1) = a_l + m_l`` (attention out, MLP out; a_l =
    ``resid_mid_l - x_(l-1)``). Only the part of the step orthogonal to x_(l-1) turns the vector:
    with u the unit direction of that part, ``attn_perp = <a_l, u>`` and ``mlp_perp = <m_l, u>``
    add up exactly to its length, and ``angle = atan2(attn_perp + mlp_perp, |x_(l-1)| + attn_par +
    mlp_par)`` (the ``_par`` terms: components along x_(l-1)). ``attn_angle`` is the rotation
    x_(l-1) -> resid_mid_l (attention alone), ``mlp_angle`` resid_mid_l -> x_l; they need not add
    up to ``angle``. All ``[L, B, P]``, degrees, NaN on padding (and at the last block when x_L was
    captured after ln_f, which is not a sum of block outputs). ``summary`` is per layer over the
    chosen slots (the targets, or every valid non-first token).
    """

    layers: np.ndarray
    angle: np.ndarray
    attn_angle: np.ndarray
    mlp_angle: np.ndarray
    attn_perp: np.ndarray
    mlp_perp: np.ndarray
    attn_par: np.ndarray
    mlp_par: np.ndarray
    summary: dict[str, LayerSummary]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols = group_columns(self.summary)
        return long_frame(cols, layers=self.layers)


def rotation_decomposition(
    data: Any,
    targets: Any = None,
    *,
    mid: Any = None,
    mask: Any = None,
    str_tokens: Any = None,
    exclude_first: bool = True,
    mode: str | None = None,
) -> RotationDecomposition:
    """Split each token's per-block rotation into attention and MLP parts (see
    :class:`RotationDecomposition`). ``data``: a ``tp.Residual(mid=True)`` capture, or
    ``[L+1, B, P, d]`` states with ``mid`` ``[L, B, P, d]``. ``targets`` (a word, a
    :class:`~tlprobes.Target` or slots) picks one slot per sequence for the summaries.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(3, 2, 4, 8))
    >>> mid = x[:-1] + np.random.default_rng(1).normal(size=(2, 2, 4, 8))
    >>> r = rotation_decomposition(x, mid=mid)
    >>> bool(np.allclose(r.angle, layer_angles(x)))
    True
    """
    st = as_states(data, mask, mode=mode)
    if mid is None:
        if getattr(data, "resid_mid", None) is None:
            raise InputError("rotation_decomposition needs resid_mid: capture "
                             "tp.Residual(mid=True) or pass mid=[L, B, P, d]")
        mid = data.resid_mid
    m = as_array(mid)
    if m.ndim == 3:
        m = m[:, None]
    L1, B, P, d = st.values.shape
    L = L1 - 1
    if m.shape != (L, B, P, d):
        raise InputError(f"mid must be [L={L}, B, P, d] = {(L, B, P, d)}, got {m.shape}")
    x0, x1 = st.values[:-1], st.values[1:]
    a, mm = m - x0, x1 - m
    with np.errstate(invalid="ignore", divide="ignore"):
        nx = np.linalg.norm(x0, axis=-1, keepdims=True)
        xh = x0 / nx
        step = a + mm
        perp = step - (step * xh).sum(-1, keepdims=True) * xh
        u = perp / np.linalg.norm(perp, axis=-1, keepdims=True)
        parts = {"attn_perp": (a * u).sum(-1), "mlp_perp": (mm * u).sum(-1),
                 "attn_par": (a * xh).sum(-1), "mlp_par": (mm * xh).sum(-1)}
    total, _ = _angle(x1, x0)
    att, _ = _angle(m, x0)
    mlp, _ = _angle(x1, m)
    ok = st.mask[None].repeat(L, 0)
    if st.meta.get("final_state") == "ln_f":
        ok[-1] = False
    arrs = {"angle": total, "attn_angle": att, "mlp_angle": mlp, **parts}
    arrs = {k: np.where(ok, v, np.nan) for k, v in arrs.items()}
    if targets is not None:
        t = resolve_targets(st, targets, str_tokens)
        tc = np.clip(t, 0, P - 1)
        items = {k: np.where(t[None] >= 0, v[:, np.arange(B), tc], np.nan) for k, v in arrs.items()}
        valid = t >= 0
    else:
        elig = included_mask(st, exclude_first)
        items = {k: np.where(elig[None], v, np.nan).reshape(L, -1) for k, v in arrs.items()}
        valid = elig.reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = items["attn_perp"] / (items["attn_perp"] + items["mlp_perp"])
    names = {"angle": "total", "attn_angle": "attention alone", "mlp_angle": "MLP alone",
             "attn_perp": "attention push", "mlp_perp": "MLP push"}
    summary = {names[k]: layer_summary(items[k], valid) for k in names}
    summary["attention share of the push"] = layer_summary(share, valid)
    settings = {"mode": st.mode, "targets": repr(targets) if targets is not None else "all tokens",
                "exclude_first": exclude_first,
                "final_state": st.meta.get("final_state", "unknown"), "meta": st.meta}
    return RotationDecomposition(np.arange(1, L + 1), arrs["angle"], arrs["attn_angle"],
                                 arrs["mlp_angle"], arrs["attn_perp"], arrs["mlp_perp"],
                                 arrs["attn_par"], arrs["mlp_par"], summary, settings)
