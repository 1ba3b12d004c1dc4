"""The one display mixin: captures, a run's ``Result`` and analyzer results show themselves.

A class that subclasses :class:`Display` stays a plain data class; it gets a short ``repr``, an
offline notebook face (``_repr_html_``), ``view(**options)`` / ``to_html`` / ``save_html`` /
``show`` and ``.plot()``. Each of them asks :mod:`tlprobes.render` for the class's default view,
and only when shown: ``import tlprobes`` and ``repr`` never load the renderers::

    >>> import numpy as np
    >>> from tlprobes.analysis import layer_summary
    >>> s = layer_summary(np.arange(12.0).reshape(4, 3) * 10)    # 4 layers x 3 items
    >>> repr(s)[:40]
    'LayerSummary(n=[4] int64, mean=[4] float'
    >>> "tlp-card" in s._repr_html_() and len(s._repr_html_()) < 4000
    True
    >>> fig = s.plot(); hasattr(fig, "_repr_png_")
    True

Every default view lives in :mod:`tlprobes.render._views` (a dispatch from the class to its
view); a subclass may define ``_build_page()`` (a ``Page`` or an HTML string) to show itself its
own way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._format import short_repr

__all__ = ["Display"]


class Display:
    """Adds ``__repr__``, ``_repr_html_``, ``view``, ``to_html``, ``save_html``, ``show`` and
    ``plot`` to a data class; the renderers load on first display (no network, ever).

    A class's own ``__repr__`` (or ``save``, for its data) comes first in the MRO and wins.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return short_repr(self)

    def _repr_html_(self) -> str:
        """What Jupyter shows: the compact card of an analyzer result, or the offline page of a
        capture (the circuitsvis bundle once per kernel, see ``tlprobes.render.notebook_bundle``)."""
        from .render import _views

        return _views.notebook_html(self)

    def _build_page(self, **options: Any) -> Any:
        """The default view (a :class:`~tlprobes.render.Page`), built by :mod:`tlprobes.render`."""
        from .render import _views

        return _views.default_page(self, **options)

    def view(self, **options: Any) -> Any:
        """The notebook view as a :class:`~tlprobes.render.Page`, with the view's options
        (``AttentionCapture``: ``prompt=``, ``layer=``); it displays itself and saves to HTML."""
        from .render import _views

        return _views.page_of(self, **options)

    def to_html(self, *, full: bool = True) -> str:
        """The HTML: a whole document (``full=True``) or a fragment to embed (``full=False``)."""
        return self.view().to_html(full=full)

    def save_html(self, path: str | os.PathLike) -> Path:
        """Write one self-contained HTML file (UTF-8) and return its path."""
        return self.view().save_html(path)

    def show(self) -> Path | None:
        """Display inline in a notebook; otherwise open a temp file in the web browser."""
        return self.view().show()

    def plot(self, **kwargs: Any) -> Any:
        """The natural figure (a matplotlib ``Figure`` that shows itself in Jupyter)."""
        from .render import _views

        return _views.figure_of(self, **kwargs)
