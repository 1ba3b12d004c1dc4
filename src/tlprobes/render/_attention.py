"""Attention views: one layer with circuitsvis, a layer selector for big models, a whole-model grid.

    >>> import numpy as np
    >>> pat = np.tril(np.ones((2, 3, 4, 4))); pat /= pat.sum(-1, keepdims=True)  # [layer head dest src]
    >>> toks = ["<bos>", "The", " cat", " sat"]
    >>> attention_view(pat, toks, layer=1, heads=[0, 2]).n_views
    1
    >>> attention_layers_view(pat, toks).n_views          # one selector, layers decoded on demand
    1
    >>> sorted(head_summaries(pat))
    ['entropy', 'prev_token', 'self', 'sink']
    >>> page = attention_overview(head_summaries(pat))   # canvas grid, no circuitsvis

``attention_view`` suits up to ~50k cells ((heads + 1) x pos^2) for an interactive feel; a 12-head
128-token layer works but takes ~20 s to draw in a browser. For 48 x 25 heads use
``attention_layers_view`` (one layer drawn at a time, stored as base64 uint8) and
``attention_overview`` (a plain canvas: every head at once, in about a second).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool, Float, Int

from .._errors import HeadError, InputError, LayerError, choices
from ._arrays import Array, MaskLike, as_numpy, check_tokens, keep_positions
from ._escape import escape_html
from ._page import Page

__all__ = [
    "attention_view",
    "attention_layers_view",
    "attention_prompts_view",
    "attention_overview",
    "head_summaries",
    "SUMMARY_LABELS",
]

#: Display names of the metrics ``head_summaries`` returns.
SUMMARY_LABELS = {
    "entropy": "entropy (nats)",
    "sink": "sink mass",
    "prev_token": "previous-token score",
    "self": "self (diagonal) mass",
}


def _heads(heads: Sequence[int] | None, n_head: int) -> list[int]:
    if heads is None:
        return list(range(n_head))
    out = [int(h) for h in heads]
    bad = [h for h in out if not 0 <= h < n_head]
    if bad or not out:
        raise HeadError(
            f"head(s) {bad or out!r} not in the pattern; choose from {choices(range(n_head))}"
        )
    return out


def _layer_labels(labels: Sequence[object] | None, n_layer: int) -> list[str]:
    if labels is None:
        return [str(i) for i in range(n_layer)]
    out = [str(x) for x in labels]
    if len(out) != n_layer:
        raise InputError(f"got {len(out)} layer_labels for {n_layer} layers; pass one per layer")
    return out


def _check_cells(n_head: int, n_pos: int, max_cells: int | None) -> None:
    cells = (n_head + 1) * n_pos * n_pos
    if max_cells is not None and cells > max_cells:
        raise InputError(
            f"{n_head} heads x {n_pos} positions is {cells:,} cells (> max_cells={max_cells:,}); "
            "pick fewer heads (heads=[...]), a shorter prompt, or attention_layers_view / "
            "attention_overview; pass max_cells=None to draw it anyway"
        )


def attention_view(
    pattern: Float[Array, "head pos pos"] | Float[Array, "layer head pos pos"],
    str_tokens: Sequence[str],
    *,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    mask: MaskLike = None,
    layer_labels: Sequence[object] | None = None,
    style: Literal["heads", "pattern"] = "heads",
    title: str | None = None,
    max_value: float | None = None,
    min_value: float | None = None,
    positive_color: str | None = None,
    negative_color: str | None = None,
    mask_upper_tri: bool | None = None,
    max_cells: int | None = 2_000_000,
) -> Page:
    """circuitsvis attention for one layer and prompt, padding removed, token strings shown.

    Args:
        pattern: ``[head, dest, src]`` for one layer, or ``[layer, head, dest, src]`` with ``layer``
            picking the layer (e.g. ``cache["pattern", 5][0]`` or a capture's ``pattern[0]``).
        str_tokens: one string per position (padding included; it is removed with ``mask``).
        layer: index into the layer axis of a 4-D pattern; for a 3-D pattern, only its label.
        heads: head subset (original indices are kept in the names ``L5H7``).
        mask: padding mask ``[pos]`` (bool or 0/1) or valid length; rows and columns are dropped.
        layer_labels: names of the layers of a 4-D pattern (default ``0..L-1``).
        style: ``"heads"`` (``AttentionHeads``: thumbnails + zoomed head) or ``"pattern"`` (one
            ``AttentionPattern`` per head).
        max_cells: refuse views larger than this many chart cells, which take minutes to draw.
    """
    arr = as_numpy(pattern)
    if arr.ndim == 4:
        labels = _layer_labels(layer_labels, arr.shape[0])
        if layer is None and arr.shape[0] == 1:
            layer = 0
        if layer is None:
            raise LayerError(
                f"layer None is not enough for a 4-D pattern: it is read as [layer, head, dest, "
                f"src] with {arr.shape[0]} layers; pass layer= one of "
                f"{choices(range(arr.shape[0]))}, or use attention_layers_view(pattern, tokens) "
                "for a layer selector (a [batch, head, dest, src] pattern: pass pattern[b])"
            )
        if not 0 <= int(layer) < arr.shape[0]:
            raise LayerError(
                f"layer {layer!r} is not in the pattern; choose from {choices(range(arr.shape[0]))}"
            )
        arr, label = arr[int(layer)], labels[int(layer)]
    elif arr.ndim == 3:
        label = str(layer) if layer is not None else "0"
    else:
        raise InputError(
            f"pattern has shape {tuple(arr.shape)}; attention_view takes [head, dest, src] or "
            "[layer, head, dest, src] for one prompt (for a capture's [layer, batch, head, dest, "
            "src] pass capture.pattern[:, b], or call capture.view(prompt=b))"
        )
    n_pos = arr.shape[-1]
    tokens = check_tokens(str_tokens, n_pos)
    keep = keep_positions(mask, n_pos)
    hs = _heads(heads, arr.shape[0])
    arr = arr[hs][:, keep][:, :, keep]
    tokens = [tokens[i] for i in keep]
    _check_cells(len(hs), len(keep), max_cells)
    names = [f"L{label}H{h}" for h in hs]
    page = Page(title or f"Attention, layer {label}")
    page.add_heading(title or f"Attention, layer {label}", level=3)
    common = dict(
        maxValue=max_value,
        minValue=min_value,
        positiveColor=positive_color,
        negativeColor=negative_color,
        maskUpperTri=mask_upper_tri,
    )
    if style == "heads":
        page.add_view(
            "AttentionHeads", attention=arr, tokens=tokens, attentionHeadNames=names, **common
        )
    elif style == "pattern":
        for name, head in zip(names, arr):
            page.add_view("AttentionPattern", caption=name, tokens=tokens, attention=head, **common)
    else:
        raise InputError(f"unknown style {style!r}; choose one of {choices(['heads', 'pattern'])}")
    return page


def _quantise(arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    finite = np.isfinite(arr)
    vals = arr[finite] if finite.any() else np.zeros(1)
    lo = min(0.0, float(vals.min()))
    hi = max(float(vals.max()), lo + 1e-12)
    q = np.rint((np.where(finite, arr, lo) - lo) / (hi - lo) * 255.0)
    return np.clip(q, 0, 255).astype(np.uint8), lo, hi


def attention_layers_view(
    pattern: Float[Array, "layer head pos pos"],
    str_tokens: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    mask: MaskLike = None,
    layer_labels: Sequence[object] | None = None,
    initial: int = 0,
    title: str | None = None,
    max_value: float | None = None,
    min_value: float | None = None,
    max_cells: int | None = 2_000_000,
) -> Page:
    """A layer selector: one circuitsvis ``AttentionHeads`` view, re-drawn for the chosen layer.

    Each layer is stored as base64 uint8 (values quantised to 1/255 of their range), decoded in the
    browser only when selected and drawn into a fresh div, so a 48-layer x 25-head model at 64
    tokens is ~8 MB of HTML (float JSON would be ~100 MB) and only one layer is drawn at a time.
    Under the view a token strip answers hovering: the hovered token's row (what it attends to,
    red) and column (what attends to it, blue), for one chosen head or the mean of the heads.

    Args:
        pattern: ``[layer, head, dest, src]`` for one prompt.
        layers: which layers to offer (default all); ``initial`` indexes this list.
        heads, mask, layer_labels, max_value, min_value: as in :func:`attention_view`.
        max_cells: limit per drawn layer ((heads + 1) x pos^2).

    See :func:`attention_prompts_view` for several prompts with a prompt selector.
    """
    arr = as_numpy(pattern)
    if arr.ndim != 4:
        raise InputError(
            f"pattern has shape {tuple(arr.shape)}; attention_layers_view takes [layer, head, dest, "
            "src] for one prompt (attention_prompts_view takes [layer, batch, head, dest, src])"
        )
    return _layers_widget(
        [arr], [str_tokens], [mask], None, layers=layers, heads=heads, layer_labels=layer_labels,
        initial=initial, initial_prompt=0, title=title, max_value=max_value,
        min_value=min_value, max_cells=max_cells,
    )


def attention_prompts_view(
    pattern: Float[Array, "layer batch head pos pos"],
    str_tokens: Sequence[Sequence[str]],
    *,
    mask: Bool[Array, "batch pos"] | Int[Array, "batch pos"] | None = None,
    prompts: Sequence[int] | None = None,
    prompt_labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    layer_labels: Sequence[object] | None = None,
    initial: int = 0,
    initial_prompt: int = 0,
    title: str | None = None,
    max_value: float | None = None,
    min_value: float | None = None,
    max_cells: int | None = 2_000_000,
) -> Page:
    """Prompt, layer and head selectors over a batch of patterns (a capture's ``pattern``).

        >>> import numpy as np
        >>> pat = np.tril(np.ones((2, 2, 3, 5, 5))); pat /= pat.sum(-1, keepdims=True)
        >>> toks = [["<s>", "a", "b", "c", "d"], ["<s>", "x", "y", "z", "<pad>"]]
        >>> page = attention_prompts_view(pat, toks, mask=np.array([[1] * 5, [1, 1, 1, 1, 0]]))
        >>> page.n_views                      # one widget, each prompt decoded when chosen
        1

    Args:
        pattern: ``[layer, batch, head, dest, src]``.
        str_tokens: token strings per prompt (padding included; ``mask`` removes it).
        mask: ``[batch, pos]`` padding mask.
        prompts: which prompts to offer (default all); ``initial_prompt`` indexes this list.
        prompt_labels: menu labels (default ``"b: first tokens..."``).
        Other arguments: as in :func:`attention_layers_view`.
    """
    arr = as_numpy(pattern)
    if arr.ndim != 5:
        raise InputError(
            f"pattern has shape {tuple(arr.shape)}; attention_prompts_view takes [layer, batch, "
            "head, dest, src] (attention_layers_view takes one prompt's [layer, head, dest, src])"
        )
    n_batch = arr.shape[1]
    bs = list(range(n_batch)) if prompts is None else [int(b) for b in prompts]
    bad = [b for b in bs if not 0 <= b < n_batch]
    if bad or not bs:
        raise InputError(
            f"prompt(s) {bad or bs!r} not in the batch; choose from {choices(range(n_batch))}"
        )
    if len(str_tokens) != n_batch:
        raise InputError(f"got str_tokens for {len(str_tokens)} prompts; the pattern has {n_batch}")
    m = None if mask is None else as_numpy(mask) > 0
    labels = (
        [str(x) for x in prompt_labels]
        if prompt_labels is not None
        else [f"{b}: " + "".join(list(str_tokens[b])[:8]).strip()[:40] for b in bs]
    )
    if len(labels) != len(bs):
        raise InputError(f"got {len(labels)} prompt_labels for {len(bs)} prompts; pass one each")
    return _layers_widget(
        [arr[:, b] for b in bs], [str_tokens[b] for b in bs],
        [None if m is None else m[b] for b in bs], labels, layers=layers, heads=heads,
        layer_labels=layer_labels, initial=initial, initial_prompt=initial_prompt, title=title,
        max_value=max_value, min_value=min_value, max_cells=max_cells,
    )


def _layers_widget(
    patterns: list[np.ndarray],
    str_tokens: list[Sequence[str]],
    masks: list[Any],
    prompt_labels: list[str] | None,
    *,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    layer_labels: Sequence[object] | None,
    initial: int,
    initial_prompt: int,
    title: str | None,
    max_value: float | None,
    min_value: float | None,
    max_cells: int | None,
) -> Page:
    n_layer, n_head = patterns[0].shape[0], patterns[0].shape[1]
    labels = _layer_labels(layer_labels, n_layer)
    if layers is None:
        ls = list(range(n_layer))
    else:
        ls = [int(x) for x in layers]
        bad = [x for x in ls if not 0 <= x < n_layer]
        if bad or not ls:
            raise LayerError(
                f"layer(s) {bad or ls!r} not in the pattern; choose from {choices(range(n_layer))}"
            )
    if not 0 <= initial < len(ls):
        raise LayerError(
            f"initial={initial!r} is not a position in layers; choose from {choices(range(len(ls)))}"
        )
    if not 0 <= initial_prompt < len(patterns):
        raise InputError(
            f"initial_prompt={initial_prompt!r} is not a position in prompts; choose from "
            f"{choices(range(len(patterns)))}"
        )
    hs = _heads(heads, n_head)
    entries = []
    for arr, toks, mask in zip(patterns, str_tokens, masks):
        n_pos = arr.shape[-1]
        tokens = check_tokens(toks, n_pos)
        keep = keep_positions(mask, n_pos)
        _check_cells(len(hs), len(keep), max_cells)
        sub = arr[ls][:, hs][:, :, keep][:, :, :, keep]
        q, lo, hi = _quantise(sub)
        entries.append({
            "data": [base64.b64encode(q[i].tobytes()).decode("ascii") for i in range(len(ls))],
            "tokens": [tokens[i] for i in keep],
            "lo": lo,
            "hi": hi,
        })
    data: dict = {
        "headNames": [[f"L{labels[layer]}H{h}" for h in hs] for layer in ls],
        "initial": int(initial),
        "props": {
            k: v for k, v in {"maxValue": max_value, "minValue": min_value}.items() if v is not None
        },
    }
    if prompt_labels is None:
        data.update(entries[0])
    else:
        data["prompts"] = entries
        data["initialPrompt"] = int(initial_prompt)
    options = "".join(
        f'<option value="{i}">{escape_html(labels[layer])}</option>' for i, layer in enumerate(ls)
    )
    prompt_menu = ""
    if prompt_labels is not None:
        popts = "".join(
            f'<option value="{i}">{escape_html(lab)}</option>' for i, lab in enumerate(prompt_labels)
        )
        prompt_menu = f'<label>Prompt <select class="tlp-prompt-select">{popts}</select></label>'
    head = title or "Attention by layer"
    n_tok = sorted({len(e["tokens"]) for e in entries})
    tok_text = str(n_tok[0]) if len(n_tok) == 1 else f"{n_tok[0]}-{n_tok[-1]}"
    body = (
        f"<h3>{escape_html(head)}</h3>"
        f'<div class="tlp-controls">{prompt_menu}<label>Layer <select class="tlp-layer-select">'
        f"{options}</select></label>"
        '<button type="button" data-step="-1" title="previous layer">&#9664;</button>'
        '<button type="button" data-step="1" title="next layer">&#9654;</button>'
        '<label>Hover head <select class="tlp-head-select"></select></label>'
        f"<span>{len(hs)} heads, {tok_text} tokens</span></div>"
        '<div class="tlp-hover"></div>'
        '<div class="tlp-layer-host"></div>'
    )
    return Page(head, decimals=6).add_widget("layers", body, data, bundle=True)


def _mask_array(
    mask: MaskLike | Bool[Array, "batch pos"] | Int[Array, "batch pos"], n_pos: int
) -> np.ndarray:
    if mask is None:
        return np.ones(n_pos, dtype=bool)
    if isinstance(mask, (int, np.integer)) and not isinstance(mask, bool):
        m = np.zeros(n_pos, dtype=bool)
        m[keep_positions(int(mask), n_pos)] = True
        return m
    m = as_numpy(mask)
    if m.shape[-1] != n_pos or not np.isin(m, (0.0, 1.0)).all():
        raise InputError(
            f"mask of shape {tuple(m.shape)} must be 0/1 or bool with last axis {n_pos}"
        )
    return m > 0


def head_summaries(
    pattern: Float[Array, "*lead pos pos"],
    mask: Bool[Array, "*batch pos"] | Int[Array, "*batch pos"] | int | None = None,
) -> dict[str, np.ndarray]:
    """Per-head summaries over real (unmasked) queries and keys.

    Returns a dict of arrays shaped like the pattern's leading axes (minus the mask's batch axes,
    which are pooled: every real query of every prompt counts once):

    - ``entropy``: mean over queries of ``-sum_k A log A`` over real keys (nats);
    - ``sink``: mean attention on the first real position (the BOS / attention sink);
    - ``prev_token``: mean ``A[t, t-1]`` over queries that have a real previous position;
    - ``self``: mean ``A[t, t]``.

    A mask ``[batch, pos]`` pairs with a pattern ``[batch, ..., pos, pos]``; a mask ``[pos]`` (or a
    valid length) applies to every leading index.

        >>> import numpy as np
        >>> A = np.eye(3)[None]                      # one head attending to itself
        >>> {k: float(v[0]) for k, v in head_summaries(A).items()}
        {'entropy': 0.0, 'sink': 0.3333333333333333, 'prev_token': 0.0, 'self': 1.0}
    """
    A = as_numpy(pattern)
    n_pos = A.shape[-1]
    lead = A.shape[:-2]
    m = _mask_array(mask, n_pos)
    nb = m.ndim - 1
    if m.shape[:-1] != lead[:nb]:
        raise InputError(
            f"mask batch shape {m.shape[:-1]} does not match the pattern's leading axes {lead}"
        )
    m = m.reshape(m.shape[:-1] + (1,) * (len(lead) - nb) + (n_pos,))  # [*batch, 1.., pos]
    valid_q = m.astype(np.float64)
    rank = np.cumsum(m, axis=-1) - 1
    first = (m & (rank == 0)).astype(np.float64)
    prev = m[..., :, None] & m[..., None, :] & (rank[..., None, :] == rank[..., :, None] - 1)
    has_prev = prev.any(-1).astype(np.float64)
    key = m[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where((A > 0) & key, A * np.log(np.where(A > 0, A, 1.0)), 0.0)
    rows = {
        "entropy": (-plogp.sum(-1), valid_q),
        "sink": ((A * first[..., None, :]).sum(-1), valid_q),
        "prev_token": ((A * prev).sum(-1), has_prev),
        "self": (np.diagonal(A, axis1=-2, axis2=-1), valid_q),
    }
    axes = tuple(range(nb)) + (-1,)
    out = {}
    for name, (vals, weight) in rows.items():
        w = np.broadcast_to(weight, vals.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = (vals * w).sum(axis=axes) / w.sum(axis=axes)
    return out


def _colormap(name: str) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps[name]
    rgb = (np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(int)
    return ["#%02x%02x%02x" % tuple(c) for c in rgb]


def attention_overview(
    summaries: Mapping[str, Float[Array, "layer head"]],
    *,
    layer_labels: Sequence[object] | None = None,
    head_labels: Sequence[object] | None = None,
    initial: str | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    cell: int | None = None,
) -> Page:
    """A whole-model grid (layers x heads) of head summaries on a plain ``<canvas>``.

    Pick the metric from a menu; hovering a cell shows every metric for that head. Drawing 48 x 25
    heads takes milliseconds, with no circuitsvis involved.

    Args:
        summaries: ``{metric: [layer, head]}``, e.g. ``head_summaries(pattern)``; NaN cells are grey.
        initial: the metric shown first (default the first key).
        cell: cell size in CSS pixels (default fits ~900 px wide, between 10 and 28).
    """
    if not summaries:
        raise InputError("summaries is empty; pass {metric: [layer, head] array}")
    names = [str(k) for k in summaries]
    mats = {str(k): as_numpy(v) for k, v in summaries.items()}
    n_layer, n_head = next(iter(mats.values())).shape
    for k, v in mats.items():
        if v.shape != (n_layer, n_head):
            raise InputError(f"summary {k!r} has shape {v.shape}; expected {(n_layer, n_head)}")
    initial = names[0] if initial is None else initial
    if initial not in mats:
        raise InputError(
            f"initial metric {initial!r} not in summaries; choose one of {choices(names)}"
        )
    size = cell or int(np.clip(900 // max(n_head, 1), 10, 28))
    layers = _layer_labels(layer_labels, n_layer)
    heads = [str(h) for h in (head_labels if head_labels is not None else range(n_head))]
    if len(heads) != n_head:
        raise InputError(f"got {len(heads)} head_labels for {n_head} heads; pass one per head")
    data = {
        "metrics": {k: {"label": SUMMARY_LABELS.get(k, k), "values": mats[k]} for k in names},
        "names": names,
        "layers": layers,
        "heads": heads,
        "cmap": _colormap(cmap),
        "cell": size,
        "left": 8 + 7 * max(len(s) for s in layers),
        "top": 18,
        "initial": initial,
        "hint": "hover a cell for its layer, head and every metric",
    }
    options = "".join(
        f'<option value="{escape_html(k)}"{" selected" if k == initial else ""}>'
        f"{escape_html(SUMMARY_LABELS.get(k, k))}</option>"
        for k in names
    )
    head = title or f"Head overview ({n_layer} layers x {n_head} heads)"
    body = (
        f"<h3>{escape_html(head)}</h3>"
        f'<div class="tlp-controls"><label>Metric <select class="tlp-metric">{options}</select>'
        '</label><span class="tlp-tip"></span></div>'
        '<div class="tlp-scroll"><canvas class="tlp-grid"></canvas></div>'
        '<div class="tlp-cbar-row"><span class="tlp-lo"></span>'
        '<canvas class="tlp-cbar" width="160" height="10"></canvas><span class="tlp-hi"></span>'
        "<span>rows: layers, columns: heads</span></div>"
    )
    return Page(head).add_widget("overview", body, data)
