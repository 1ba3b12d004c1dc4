"""State-space trajectories: every token's path through the layers in one common PCA basis, with
per-group mean paths and distances between groups (seed 001).

    >>> import numpy as np
    >>> r = state_space_trajectories(np.random.default_rng(0).normal(size=(4, 6, 5)))
    >>> r.projections.shape
    (4, 6, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError
from ._inputs import as_array, as_states, warn_nan
from ._pca import PCAResult, pca
from ._tables import FrameMixin, long_frame

__all__ = ["state_space_trajectories", "StateSpace"]


@dataclass(frozen=True, eq=False, repr=False)
class StateSpace(FrameMixin):
    """Token trajectories ``[L+1, n_items, k]`` in one PCA basis fitted on all (item, layer) rows;
    per-group mean trajectories ``group_means [G, L+1, k]``; per-layer distances between group
    means in PC space (``pc_distance``) and in the full space (``full_distance``), keyed
    ``"a|b"``; ``group_steps [G, L]`` = step lengths of the mean PC trajectories; ``items`` are
    the input items kept (target found, all vectors finite)."""

    layers: np.ndarray
    projections: np.ndarray
    items: np.ndarray
    groups: list[str]
    item_groups: np.ndarray
    group_means: np.ndarray
    pc_distance: dict[str, np.ndarray]
    full_distance: dict[str, np.ndarray]
    group_steps: np.ndarray
    pca: PCAResult
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols: dict[tuple[str, str], np.ndarray] = {}
        for gi, g in enumerate(self.groups):
            for c in range(self.group_means.shape[2]):
                cols[(g, f"mean_pc{c + 1}")] = self.group_means[gi, :, c]
            cols[(g, "step")] = np.concatenate([[np.nan], self.group_steps[gi]])
        for k in self.pc_distance:
            cols[(k, "pc_distance")] = self.pc_distance[k]
            cols[(k, "full_distance")] = self.full_distance[k]
        return long_frame(cols, layers=self.layers)


def state_space_trajectories(
    data: Any,
    targets: Any = None,
    *,
    groups: Any = None,
    mask: Any = None,
    n_components: int = 2,
    str_tokens: Any = None,
) -> StateSpace:
    """Fit one PCA on every (item, layer) vector, then project each item's path through the
    layers into it. ``data``: ``[L+1, n_items, d]`` vectors, or states (capture or
    ``[L+1, B, P, d]``) with ``targets`` (token string or one slot per sequence) picking one
    token per sequence; sequences without the target are dropped. ``groups``: a label per item.

    >>> import numpy as np
    >>> r = state_space_trajectories(np.random.default_rng(0).normal(size=(4, 6, 5)),
    ...                              groups=["a"] * 3 + ["b"] * 3)
    >>> r.projections.shape, r.pc_distance["a|b"].shape
    ((4, 6, 2), (4,))
    """
    from ._angles import resolve_targets

    if targets is None:
        V = as_array(data)
        if V.ndim != 3:
            raise InputError(f"expected [L+1, n_items, d] vectors (or states with targets), "
                             f"got shape {V.shape}")
        keep = np.ones(V.shape[1], bool)
    else:
        st = as_states(data, mask)
        t = resolve_targets(st, targets, str_tokens)
        keep = t >= 0
        V = st.values[:, np.flatnonzero(keep), t[keep]]
    labels = np.asarray(["all"] * keep.size if groups is None else list(groups), dtype=object)
    if labels.size != keep.size:
        raise InputError(f"groups has {labels.size} labels for {keep.size} items")
    labels = labels[keep]
    fin = np.isfinite(V).all((0, 2))
    warn_nan(int((~fin).sum()), "items (NaN/inf vectors; dropped from the trajectories)")
    V, labels = V[:, fin], labels[fin]
    items = np.flatnonzero(keep)[fin]
    L1, n, d = V.shape
    fit = pca(V.reshape(-1, d), n_components)
    proj = fit.transform(V.reshape(-1, d)).reshape(L1, n, -1)
    names = list(dict.fromkeys(labels.tolist()))
    gm = np.stack([proj[:, labels == g].mean(1) for g in names])
    fm = np.stack([V[:, labels == g].mean(1) for g in names])
    pcd, fd = {}, {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            key = f"{names[i]}|{names[j]}"
            pcd[key] = np.linalg.norm(gm[i] - gm[j], axis=-1)
            fd[key] = np.linalg.norm(fm[i] - fm[j], axis=-1)
    steps = np.linalg.norm(np.diff(gm, axis=1), axis=-1)
    settings = {"n_components": fit.components.shape[0], "basis": "one PCA over all layers"}
    return StateSpace(np.arange(L1), proj, items, names, labels.astype(str), gm, pcd, fd, steps,
                      fit, settings)
