"""``HTMLDisplayMixin``: any object that can build a page displays itself offline and saves to HTML.

A class provides ``_build_page()`` (a :class:`~tlprobes.render.Page` or an HTML string) and gets
``_repr_html_`` for Jupyter, ``to_html``, ``save_html`` / ``save`` and ``show``::

    >>> from tlprobes.render import HTMLDisplayMixin, Page
    >>> class Angles(HTMLDisplayMixin):
    ...     def _build_page(self):
    ...         return Page("angles").add_text("mean angle 12.3 degrees")
    >>> "mean angle" in Angles()._repr_html_()
    True

Everything is self-contained (scripts inlined, images as data: URLs); nothing contacts the network,
unlike circuitsvis's own ``_repr_html_``, which pings google.com on every display.
A class whose ``save`` already means "save the data" keeps its own ``save`` (it comes first in the
MRO) and still has ``save_html``.
"""

from __future__ import annotations

import os
import tempfile
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._page import Page

__all__ = ["HTMLDisplayMixin", "in_notebook"]


def in_notebook() -> bool:
    """True inside a running IPython kernel (Jupyter, VS Code notebooks), False in scripts and shells."""
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class HTMLDisplayMixin:
    """Adds offline ``_repr_html_``, ``to_html``, ``save_html``, ``save`` and ``show`` to a class."""

    def _build_page(self) -> Page | str:
        raise NotImplementedError(f"{type(self).__name__} must define _build_page()")

    def to_html(self, *, full: bool = True) -> str:
        """The HTML: a whole document (``full=True``) or a fragment to embed (``full=False``)."""
        built = self._build_page()
        if isinstance(built, str):
            from ._page import Page

            built = Page(type(self).__name__).add_html(built)
        return built.to_html(full=full)

    def _repr_html_(self) -> str:
        return self.to_html(full=False)

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
        if in_notebook():
            from IPython.display import HTML, display  # type: ignore[import-not-found]

            display(HTML(self.to_html(full=False)))
            return None
        fd, name = tempfile.mkstemp(prefix="tlprobes-", suffix=".html")
        os.close(fd)
        path = self.save_html(name)
        webbrowser.open(path.resolve().as_uri())
        return path
