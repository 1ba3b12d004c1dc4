"""Token views: prompt tokens coloured by a per-token metric, and the logit-lens table.

>>> import numpy as np
>>> toks = ["<bos>", "The", " cat", " sat"]
>>> token_view(toks, np.array([90.0, 40.0, 12.5, 10.1]), label="angle at layer 6 (deg)").n_views
1
>>> table = logit_lens_table([["a", "b"], ["c", "</td>"]], np.array([[0.1, 0.2], [0.7, 0.9]]))
>>> "&lt;/td&gt;" in table.to_html()
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jaxtyping import Float

from .._errors import InputError
from ._arrays import Array, MaskLike, as_numpy, check_tokens, keep_positions
from ._escape import escape_html
from ._page import Page

__all__ = ["token_view", "logit_lens_table"]


def token_view(
    str_tokens: Sequence[str],
    values: Float[Array, " pos"] | Mapping[str, Float[Array, " pos"]],
    *,
    label: str | None = None,
    mask: MaskLike = None,
    min_value: float | None = None,
    max_value: float | None = None,
    positive_color: str | None = None,
    negative_color: str | None = None,
) -> Page:
    """Tokens coloured by any per-token metric (circuitsvis ``ColoredTokens``); hover shows the value.

    Args:
        str_tokens: one string per position (padding included; removed with ``mask``).
        values: ``[pos]`` metric (angle at a layer, path length, logit-lens rank ...), or
            ``{label: [pos]}`` for several metrics at once (``ColoredTokensMulti``, with a picker).
        label: heading above the view (escaped).
        mask: padding mask ``[pos]`` or valid length.
        min_value, max_value: colour-scale limits (default: the data's range, symmetric about 0).
    """
    multi = isinstance(values, Mapping)
    arrays = {str(k): as_numpy(v) for k, v in values.items()} if multi else {"": as_numpy(values)}
    if not arrays:
        raise InputError("values is empty; pass a [pos] array or {label: [pos] array}")
    n_pos = len(str_tokens)
    for name, v in arrays.items():
        if v.shape != (n_pos,):
            raise InputError(
                f"values{'[' + repr(name) + ']' if multi else ''} has shape {v.shape}; "
                f"expected ({n_pos},), one value per token"
            )
    tokens = check_tokens(str_tokens, n_pos, "values")
    keep = keep_positions(mask, n_pos)
    tokens = [tokens[i] for i in keep]
    page = Page(label or "Token view")
    if label:
        page.add_heading(label, level=3)
    if multi:
        stacked = np.stack([v[keep] for v in arrays.values()], axis=-1)
        page.add_view("ColoredTokensMulti", tokens=tokens, values=stacked, labels=list(arrays))
    else:
        page.add_view(
            "ColoredTokens",
            tokens=tokens,
            values=arrays[""][keep],
            minValue=min_value,
            maxValue=max_value,
            positiveColor=positive_color,
            negativeColor=negative_color,
        )
    return page


def _cell_style(p: float) -> str:
    if not np.isfinite(p):
        return "background:#eeeeee;color:#777"
    a = float(np.clip(p, 0.0, 1.0))
    text = "#ffffff" if a > 0.55 else "#1d1d1f"
    return f"background:rgba(33,102,172,{a:.3f});color:{text}"


def logit_lens_table(
    top_tokens: Sequence[Sequence[str]],
    top_probs: Float[Array, "layer pos"],
    *,
    row_labels: Sequence[object] | None = None,
    col_labels: Sequence[str] | None = None,
    mask: MaskLike = None,
    title: str | None = "Logit lens: top token per layer and position",
) -> Page:
    """A plain HTML table, layer x position -> top token, each cell shaded by its probability.

    Args:
        top_tokens: ``top_tokens[layer][pos]``, the decoded top-1 token strings.
        top_probs: ``[layer, pos]`` their probabilities (shading; NaN is grey).
        row_labels: layer names (default ``0..L-1``); col_labels: usually the input ``str_tokens``.
        mask: padding mask ``[pos]`` or valid length; masked columns are dropped.

    Tokens are shown verbatim (spaces kept) and escaped; hover a cell for its ``repr`` and p.
    """
    probs = as_numpy(top_probs)
    n_layer, n_pos = probs.shape
    rows = [list(map(str, r)) for r in top_tokens]
    if len(rows) != n_layer or any(len(r) != n_pos for r in rows):
        shape = (len(rows), sorted({len(r) for r in rows}))
        raise InputError(
            f"top_tokens is {shape[0]} rows of lengths {shape[1]}; top_probs is {probs.shape}"
        )
    rlabels = [str(x) for x in (row_labels if row_labels is not None else range(n_layer))]
    if len(rlabels) != n_layer:
        raise InputError(f"got {len(rlabels)} row_labels for {n_layer} layers; pass one per layer")
    clabels = check_tokens(col_labels, n_pos, "table") if col_labels is not None else None
    keep = keep_positions(mask, n_pos)
    head = (
        "<tr><th>layer</th>"
        + "".join(
            f'<th title="{escape_html(repr(clabels[j]))}">{escape_html(clabels[j])}</th>'
            if clabels is not None
            else f"<th>{j}</th>"
            for j in keep
        )
        + "</tr>"
    )
    body = []
    for i in range(n_layer):
        cells = "".join(
            f'<td style="{_cell_style(probs[i, j])}" '
            f'title="{escape_html(repr(rows[i][j]))} p={probs[i, j]:.3f}">'
            f"{escape_html(rows[i][j])}</td>"
            for j in keep
        )
        body.append(f"<tr><th>{escape_html(rlabels[i])}</th>{cells}</tr>")
    html = (
        '<div class="tlp-scroll"><table class="tlp-table tlp-lens">'
        f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"
    )
    page = Page(title or "Logit lens")
    if title:
        page.add_heading(title, level=3)
    return page.add_html(html)
