"""``Report``: one self-contained HTML file for a study: figures, tables and views, then the manifest.

    >>> import numpy as np
    >>> from tlprobes.render import Report, plot_scree, token_view
    >>> rep = Report("Her vs his", {"model": "gpt2-small", "mode": "hooked", "tl_version": "4.3.0"})
    >>> rep = rep.add_heading("Geometry").add_figure(plot_scree(np.array([0.6, 0.2, 0.1])))
    >>> rep = rep.add_view(token_view(["a", " b"], np.array([1.0, 2.0]), label="angle"))
    >>> html = rep.to_html()
    >>> html.count("var CircuitsVis="), "unpkg" in html
    (1, False)

The circuitsvis bundle is inlined once however many views the report holds, images are ``data:``
URLs, and a Content-Security-Policy forbids every fetch: the file reads the same offline, anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .._errors import InputError, choices
from ._escape import escape_html
from ._page import Page
from ._plots import figure_to_html

__all__ = ["Report", "manifest_table"]


def _value_html(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(value, indent=1, default=str, ensure_ascii=False)
        return f'<code style="white-space:pre-wrap">{escape_html(text)}</code>'
    return escape_html(value)


def manifest_table(manifest: Mapping[str, Any]) -> str:
    """The run manifest as an escaped two-column HTML table (nested values as JSON)."""
    rows = "".join(
        f"<tr><th>{escape_html(k)}</th><td>{_value_html(v)}</td></tr>" for k, v in manifest.items()
    )
    return f'<table class="tlp-table tlp-manifest"><tbody>{rows}</tbody></table>'


class Report:
    """A study report. ``add_*`` methods append in order and return the report, so calls chain.

    Args:
        title: the page title and top heading.
        manifest: the run's manifest (model, mode, TL version, settings ...), shown as a table.
        figure_format: ``"png"`` (base64, compact for dense plots) or ``"svg"`` (inline, sharp).
    """

    def __init__(
        self,
        title: str,
        manifest: Mapping[str, Any] | None = None,
        *,
        figure_format: Literal["png", "svg"] = "png",
        dpi: int = 110,
    ) -> None:
        if figure_format not in ("png", "svg"):
            raise InputError(
                f"figure_format={figure_format!r}; choose one of {choices(['png', 'svg'])}"
            )
        self.title = str(title)
        self.manifest = dict(manifest or {})
        self.figure_format = figure_format
        self.dpi = dpi
        self._body = Page(self.title)
        self._toc: list[tuple[str, str]] = []

    def add_heading(self, text: str, level: int = 2) -> Report:
        """A section heading; level-2 headings are listed in the contents."""
        self._body.add_heading(text, level)
        if level == 2:
            anchor = self._body._blocks[-1].html.split('"')[1]
            self._toc.append((anchor, str(text)))
        return self

    def add_text(self, text: str) -> Report:
        """A paragraph of escaped text (newlines kept)."""
        self._body.add_text(text)
        return self

    def add_figure(
        self, fig: Any, caption: str | None = None, *, fmt: Literal["png", "svg"] | None = None
    ) -> Report:
        """A matplotlib figure, inlined as PNG or SVG, with an optional caption."""
        inner = figure_to_html(fig, fmt or self.figure_format, dpi=self.dpi, alt=caption or "")
        cap = (
            f'<figcaption class="tlp-caption">{escape_html(caption)}</figcaption>'
            if caption
            else ""
        )
        self._body.add_html(f"<figure>{inner}{cap}</figure>")
        return self

    def add_table(
        self,
        table: Any,
        caption: str | None = None,
        *,
        float_format: str = "{:.4g}",
        max_rows: int | None = 200,
        index: bool = False,
    ) -> Report:
        """A pandas DataFrame (or a mapping of columns) as an escaped HTML table."""
        import pandas as pd

        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        html = df.to_html(
            escape=True,
            classes="tlp-table",
            border=0,
            float_format=float_format.format,
            max_rows=max_rows,
            index=index,
        )
        if caption:
            self._body.add_html(f'<p class="tlp-caption">{escape_html(caption)}</p>')
        self._body.add_html(f'<div class="tlp-scroll">{html}</div>')
        return self

    def add_view(self, view: Any, caption: str | None = None) -> Report:
        """An interactive view (a ``Page`` from ``attention_view``, ``token_view`` ... or a result)."""
        if not isinstance(view, Page) and not callable(getattr(view, "_build_page", None)):
            raise InputError(
                f"add_view got {type(view).__name__!r}; pass a Page (attention_view, token_view, "
                "logit_lens_table ...) or a result with _build_page"
            )
        self._body.add_page(view)
        if caption:
            self._body.add_text(caption, css_class="tlp-caption")
        return self

    def _build_page(self) -> Page:
        """Title, contents, the results in order, and the run manifest last."""
        page = Page(self.title)
        page.add_heading(self.title, level=1)
        if len(self._toc) > 1:
            links = "".join(f'<li><a href="#{a}">{escape_html(t)}</a></li>' for a, t in self._toc)
            page.add_html(f'<nav class="tlp-toc"><strong>Contents</strong><ul>{links}</ul></nav>')
        page.add_page(self._body)
        if self.manifest:
            page.add_heading("Run manifest", level=2)
            page.add_html(
                f"<details><summary>Model, versions, settings, timings and file hashes</summary>"
                f"{manifest_table(self.manifest)}</details>"
            )
        return page

    # -- output: the built page's ------------------------------------------------------------------
    def to_html(self, *, full: bool = True) -> str:
        """The report as a whole HTML document (``full``) or as a self-contained fragment."""
        return self._build_page().to_html(full=full)

    def _repr_html_(self) -> str:
        return self._build_page()._repr_html_()

    def __html__(self) -> str:
        return self.to_html(full=False)

    def save_html(self, path: str | os.PathLike) -> Path:
        """Write one self-contained HTML file (UTF-8) and return its path."""
        return self._build_page().save_html(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Same as :meth:`save_html`."""
        return self.save_html(path)

    def show(self) -> Path | None:
        """Display inline in a notebook; otherwise open a temp file in the web browser."""
        return self._build_page().show()

    def __repr__(self) -> str:
        return (
            f"Report({self.title!r}, blocks={len(self._body._blocks)}, views={self._body.n_views})"
        )
