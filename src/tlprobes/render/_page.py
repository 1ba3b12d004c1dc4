"""``Page``: one self-contained, offline HTML page of circuitsvis views, text, figures and tables.

The circuitsvis bundle (``dist/cdn/iife.js``, 1.3 MB) is inlined once, as a classic script, however
many views the page holds; every view is a ``CircuitsVis.render`` call with escaped, rounded JSON
props. There is no CDN link and no network request, ever::

    >>> import numpy as np
    >>> page = Page("demo").add_heading("Layer 0")
    >>> page = page.add_view("ColoredTokens", tokens=["a", "</script>"], values=np.array([0.1, 0.9]))
    >>> page.n_views, page.to_html().count("var CircuitsVis=")
    (1, 1)
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import tempfile
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InputError, choices
from . import _repr
from ._escape import escape_html, escape_script, script_json
from ._runtime import RUNTIME_JS, circuitsvis_bundle

__all__ = ["Page", "COMPONENTS", "circuitsvis_bundle", "csp_for", "script_hashes"]

#: circuitsvis React components exported by the bundle (circuitsvis 1.43).
COMPONENTS = (
    "AttentionHeads",
    "AttentionPattern",
    "AttentionPatterns",
    "ColoredTokens",
    "ColoredTokensMulti",
    "TextNeuronActivations",
    "TokenLogProbs",
    "TopkSamples",
    "TopkTokens",
)

# circuitsvis draws strings with React's dangerouslySetInnerHTML in many places (ColoredTokens does
# `token.replace(/\s/g, "&nbsp;")` then innerHTML; AttentionPatterns' token buttons, TopkTokens,
# TokenLogProbs, TopkSamples and TextNeuronActivations do the same), so every string of every prop of
# those components is HTML-escaped, however deeply nested. AttentionHeads and AttentionPattern only
# put strings on a canvas (chart.js axis labels) or in React text children, which React escapes
# itself: HTML-escaping there would show "&lt;" instead of "<", so their strings stay verbatim (the
# browser test in tests/test_render_injection_browser.py checks every prop of every component).
_TEXT_ONLY_COMPONENTS = frozenset({"AttentionHeads", "AttentionPattern"})


def _escape_strings(value: Any) -> Any:
    """Every string inside ``value`` (lists, tuples, dicts, numpy string arrays) HTML-escaped."""
    if isinstance(value, str):
        return escape_html(value)
    if isinstance(value, Mapping):
        return {k: _escape_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_strings(v) for v in value]
    if type(value).__module__ == "numpy" and getattr(value, "dtype", None) is not None:
        if value.dtype.kind in ("U", "S", "O"):
            return _escape_strings(value.tolist())
    return value


_escape_tokens = _escape_strings  # the old name, kept for callers


CSS = """
.tlp-page{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 line-height:1.45;max-width:1200px}
.tlp-page h1{font-size:1.6em;margin:.4em 0}.tlp-page h2{font-size:1.3em;margin:1.2em 0 .4em;
 border-bottom:1px solid #ddd}.tlp-page h3{font-size:1.1em;margin:1em 0 .3em}
.tlp-page p.tlp-text{white-space:pre-wrap;margin:.4em 0}
.tlp-page .tlp-caption{color:#555;font-size:.9em;margin:.2em 0 .8em}
.tlp-page .tlp-view{margin:10px 0}
.tlp-page table.tlp-table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
.tlp-page table.tlp-table th,.tlp-page table.tlp-table td{border:1px solid #ddd;padding:2px 6px;
 text-align:right}
.tlp-page table.tlp-table th{background:#f4f4f4}
.tlp-page table.tlp-manifest td,.tlp-page table.tlp-manifest th{text-align:left;vertical-align:top}
.tlp-page table.tlp-lens td{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;
 text-align:center}
.tlp-page .tlp-scroll{overflow-x:auto}
.tlp-page .tlp-controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
.tlp-page .tlp-tip{font-size:.85em;color:#333;min-height:1.3em}
.tlp-page .tlp-cbar-row{display:flex;gap:6px;align-items:center;font-size:.8em}
.tlp-page figure{margin:.6em 0}.tlp-page figure img,.tlp-page figure svg{max-width:100%;height:auto}
.tlp-page pre.tlp-error{color:#b00020;white-space:pre-wrap}
.tlp-page nav.tlp-toc{font-size:.9em}
"""

# Browsers enforce this even if a bundle tried: nothing may be fetched, and the only scripts that run
# are the inline ones this page wrote, each allowed by its SHA-256 (no 'unsafe-inline', so no inline
# event handler and no injected <script> can run). circuitsvis's React needs no eval.
CSP_TEMPLATE = (
    "default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; worker-src 'none'; connect-src 'none'; frame-src 'none'; "
    "object-src 'none'; media-src 'none'; form-action 'none'; base-uri 'none'"
)


def script_hashes(scripts: list[str]) -> list[str]:
    """``'sha256-...'`` of each inline script body (the CSP's allow-list), without repeats."""
    seen: dict[str, None] = {}
    for body in scripts:
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        seen[f"'sha256-{digest}'"] = None
    return list(seen)


def csp_for(scripts: list[str]) -> str:
    """The Content-Security-Policy of a page that runs exactly ``scripts`` (their bodies)."""
    return CSP_TEMPLATE.format(hashes=" ".join(script_hashes(scripts)) or "'none'")


CSP = CSP_TEMPLATE.format(hashes="'none'")  # the policy of a page without scripts


@dataclass(frozen=True)
class _Block:
    html: str
    bundle: bool = False
    scripts: tuple[str, ...] = ()  # bodies of the inline scripts this block wrote (hashed in the CSP)


class Page:
    """A page builder. ``add_*`` methods append blocks and return the page, so calls chain.

    Args:
        title: the document title (escaped).
        decimals: floats in view props are rounded to this many decimals (file size is ~2x
            smaller than circuitsvis's 17-digit output; rendering is unchanged).
    """

    def __init__(self, title: str = "tlprobes", *, decimals: int = 4) -> None:
        self.title = str(title)
        self.decimals = int(decimals)
        self._blocks: list[_Block] = []
        self._token = secrets.token_hex(4)
        self._count = 0

    # -- building -------------------------------------------------------------------------------
    def _new_id(self) -> str:
        self._count += 1
        return f"tlp-{self._token}-{self._count}"

    def add_html(self, html: str, *, bundle: bool = False) -> Page:
        """Append trusted HTML (already escaped by the caller). ``bundle``: it calls CircuitsVis.

        A ``<script>`` in ``html`` does not run in the saved page: the CSP allows only the scripts
        that :meth:`add_view` and :meth:`add_widget` write.
        """
        self._blocks.append(_Block(str(html), bool(bundle)))
        return self

    def _add_script_block(self, before: str, script: str, after: str = "", *, bundle: bool) -> Page:
        self._blocks.append(
            _Block(f"{before}<script>{script}</script>{after}", bool(bundle), (script,))
        )
        return self

    def add_heading(self, text: str, level: int = 2) -> Page:
        """Append an escaped heading ``<h{level}>`` (level 1-4)."""
        if level not in (1, 2, 3, 4):
            raise InputError(
                f"heading level {level!r} is not valid; choose one of {choices([1, 2, 3, 4])}"
            )
        anchor = self._new_id()
        return self.add_html(f'<h{level} id="{anchor}">{escape_html(text)}</h{level}>')

    def add_text(self, text: str, *, css_class: str = "tlp-text") -> Page:
        """Append a paragraph of escaped text; newlines are kept."""
        return self.add_html(f'<p class="{escape_html(css_class)}">{escape_html(text)}</p>')

    def add_view(self, component: str, *, caption: str | None = None, **props: Any) -> Page:
        """Append a circuitsvis view: ``CircuitsVis.render(el, CircuitsVis.<component>, props)``.

        ``props`` use circuitsvis's JavaScript names (``attention``, ``tokens``,
        ``attentionHeadNames``, ``maxValue`` ...); arrays and tensors are converted, floats rounded,
        NaN becomes ``null`` and ``None`` values are dropped. circuitsvis draws many strings with
        ``innerHTML``, so every string of every prop is HTML-escaped first (except in
        ``AttentionHeads`` / ``AttentionPattern``, which draw them as canvas or React text): ``"<b>"``
        shows as text instead of becoming markup.
        """
        if component not in COMPONENTS:
            raise InputError(
                f"unknown circuitsvis component {component!r}; choose one of {choices(COMPONENTS)}"
            )
        data = {k: v for k, v in props.items() if v is not None}
        if component not in _TEXT_ONLY_COMPONENTS:
            data = {k: _escape_strings(v) for k, v in data.items()}
        view_id = self._new_id()
        div = f'<div class="tlp-view tlp-cv" id="{view_id}" data-component="{component}"></div>'
        script = (f'tlp.mount(document.currentScript,"{view_id}","{component}",'
                  f"{script_json(data, self.decimals)});")
        after = f'<p class="tlp-caption">{escape_html(caption)}</p>' if caption else ""
        return self._add_script_block(div, script, after, bundle=True)

    def add_widget(self, kind: str, body_html: str, data: Any, *, bundle: bool = False) -> Page:
        """Append a ``tlp`` runtime widget: ``body_html`` (trusted) then ``tlp.<kind>(el, data)``."""
        if kind not in ("layers", "overview"):
            raise InputError(
                f"unknown widget {kind!r}; choose one of {choices(['layers', 'overview'])}"
            )
        wid = self._new_id()
        div = f'<div class="tlp-widget tlp-{kind}" id="{wid}">{body_html}</div>'
        script = f'tlp.{kind}(document.currentScript,"{wid}",{script_json(data, self.decimals)});'
        return self._add_script_block(div, script, bundle=bundle)

    def add_page(self, other: Any) -> Page:
        """Append every block of another page (or of any object with ``_build_page``: a
        ``Report``, a capture, a run's ``Result``)."""
        page = other
        for _ in range(3):  # a Result builds a Report, which builds a Page
            build = getattr(page, "_build_page", None)
            if isinstance(page, (Page, str)) or not callable(build):
                break
            page = build()
        if isinstance(page, str):
            return self.add_html(page)
        if not isinstance(page, Page):
            raise InputError(f"cannot add {type(other).__name__!r}; expected a Page or a result")
        self._blocks.extend(page._blocks)
        return self

    # -- output ---------------------------------------------------------------------------------
    @property
    def n_views(self) -> int:
        """How many blocks call circuitsvis."""
        return sum(b.bundle for b in self._blocks)

    def _build_page(self) -> Page:
        return self

    def body_html(self) -> str:
        """The blocks alone, without style or scripts (for embedding in a page that has them)."""
        return "\n".join(b.html for b in self._blocks)

    def to_html(self, *, full: bool = True) -> str:
        """The page as a whole HTML document (``full``) or as a self-contained fragment.

        Both hold the style, the circuitsvis bundle (once, only if a view needs it), the ``tlp``
        runtime and the blocks; the document adds ``<head>`` with charset, title and a
        Content-Security-Policy that forbids every network fetch.
        """
        scripts = [escape_script(RUNTIME_JS)]
        parts = [f"<style>{CSS}</style>"]
        if any(b.bundle for b in self._blocks):
            scripts.insert(0, circuitsvis_bundle())
            parts.append(f"<script>{scripts[0]}</script>")
        parts.append(f"<script>{scripts[-1]}</script>")
        parts.append(self.body_html())
        fragment = '<div class="tlp-page">\n' + "\n".join(parts) + "\n</div>"
        if not full:
            return fragment
        scripts += [body for b in self._blocks for body in b.scripts]
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp_for(scripts)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{escape_html(self.title)}</title></head>\n<body>\n{fragment}\n</body></html>\n"
        )

    def _repr_html_(self) -> str:
        return _repr.notebook_fragment(self.to_html(full=False))

    def __html__(self) -> str:
        return self.to_html(full=False)

    def save_html(self, path: str | os.PathLike) -> Path:
        """Write one self-contained HTML file (UTF-8) and return its path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.to_html(full=True), encoding="utf-8")
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Same as :meth:`save_html`."""
        return self.save_html(path)

    def show(self) -> Path | None:
        """Display inline in a notebook; otherwise write a temp file and open it in the web browser.

        Returns the temp file's path outside a notebook (``None`` inside one).
        """
        if _repr.in_notebook():
            from IPython.display import HTML, display  # type: ignore[import-not-found]

            display(HTML(self._repr_html_()))
            return None
        fd, name = tempfile.mkstemp(prefix="tlprobes-", suffix=".html")
        os.close(fd)
        path = self.save_html(name)
        webbrowser.open(path.resolve().as_uri())
        return path

    def __repr__(self) -> str:
        return f"Page({self.title!r}, blocks={len(self._blocks)}, views={self.n_views})"
