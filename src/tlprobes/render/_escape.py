"""Escaping for everything tlprobes writes into HTML: text, attributes, inline JSON and inline JS.

Every token string, prompt, label and manifest value passes through here before it reaches a page::

    >>> escape_html('</script><img src=x onerror=alert(1)>')
    '&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;'
    >>> script_json({"tokens": ["</script>"], "v": [0.123456, float("nan")]}, decimals=3)
    '{"tokens":["\\\\u003c/script\\\\u003e"],"v":[0.123,null]}'
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["escape_html", "escape_script", "script_json", "to_jsonable"]

_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)
_JSON_UNSAFE = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_JSON_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def escape_html(text: object) -> str:
    """HTML-escape any value's ``str`` for element text or a quoted attribute (``&<>"'``)."""
    return html.escape(str(text), quote=True)


def escape_script(js: str) -> str:
    """Make JavaScript source safe inside an inline ``<script>``: ``</script`` becomes ``<\\/script``.

    Inside a JS string literal or regex ``<\\/`` is the same value as ``</``, so the code is unchanged
    (circuitsvis instead deletes ``</script>`` from its bundle, which silently changes React's code).
    """
    return _SCRIPT_END.sub(r"<\\/\1", js)


def _array_to_list(arr: np.ndarray, decimals: int | None) -> Any:
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr.tolist()
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if decimals is not None:
            arr = np.round(arr, decimals)
        finite = np.isfinite(arr)
        if not finite.all():
            obj = arr.astype(object)
            obj[~finite] = None
            return obj.tolist()
        return arr.tolist()
    return [to_jsonable(v, decimals) for v in arr.tolist()]


def to_jsonable(obj: Any, decimals: int | None = 4) -> Any:
    """Turn numpy / torch / nested containers into JSON-ready Python values.

    Floats are rounded to ``decimals`` (``None`` keeps them), NaN and infinities become ``None``
    (JSON ``null``), tensors and arrays become nested lists.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return round(obj, decimals) if decimals is not None else obj
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), decimals)
    if isinstance(obj, np.ndarray):
        return _array_to_list(obj, decimals)
    if type(obj).__module__.startswith("torch"):
        return _array_to_list(obj.detach().cpu().numpy(), decimals)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, decimals) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, decimals) for v in obj]
    return str(obj)


def script_json(obj: Any, decimals: int | None = 4) -> str:
    """Serialise ``obj`` as compact JSON that is safe to inline in ``<script>`` (no ``<``, ``>``, ``&``).

    The result is valid JSON and a valid JavaScript expression; NaN and infinities are ``null``.
    """
    text = json.dumps(
        to_jsonable(obj, decimals), allow_nan=False, separators=(",", ":"), ensure_ascii=False
    )
    return _JSON_UNSAFE_RE.sub(lambda m: _JSON_UNSAFE[m.group(0)], text)
