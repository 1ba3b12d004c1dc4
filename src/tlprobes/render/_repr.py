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

In a notebook the 1.3 MB circuitsvis bundle travels with the first view of the kernel session only;
later outputs carry a few bytes and wait for ``window.CircuitsVis`` (outputs of a saved notebook run
in order when it is reopened, so they still draw). Re-running the cell that carried the bundle sends
it again. :func:`notebook_bundle` switches to ``"always"`` (Colab, where each output is its own
frame, always gets it). Files written by ``save_html`` are always whole and offline.
A class whose ``save`` already means "save the data" keeps its own ``save`` (it comes first in the
MRO) and still has ``save_html``.
"""

from __future__ import annotations

import abc
import os
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._page import Page

__all__ = ["HTMLDisplayMixin", "in_notebook", "notebook_bundle", "notebook_fragment"]


def in_notebook() -> bool:
    """True inside a running IPython kernel (Jupyter, VS Code notebooks), False in scripts and shells."""
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


_BUNDLE_STATE: dict[str, object] = {"mode": "once", "cell": None, "count": None}
_OMITTED = "/* tlprobes: the circuitsvis bundle came with an earlier output of this notebook */"


def notebook_bundle(mode: str = "once") -> None:
    """How notebook outputs carry the circuitsvis bundle: ``"once"`` (default) or ``"always"``.

    ``"once"``: the first view of a kernel session carries it and later views reuse it, so a
    notebook with ten attention views stays small. ``"always"``: every view carries it (1.3 MB
    each), for front-ends that isolate outputs. Calling it with ``"once"`` also forgets which cell
    carried the bundle, so the next view sends it again.

        >>> notebook_bundle("always"); notebook_bundle("once")
    """
    from .._errors import InputError, choices

    if mode not in ("once", "always"):
        raise InputError(
            f"unknown bundle mode {mode!r}; choose one of {choices(['once', 'always'])}"
        )
    _BUNDLE_STATE.update(mode=mode, cell=None, count=None)


def _cell_and_count() -> tuple[object, object]:
    from IPython import get_ipython  # type: ignore[import-not-found]

    shell = get_ipython()
    count = getattr(shell, "execution_count", None)
    cell = None
    try:
        cell = (shell.kernel.get_parent() or {}).get("metadata", {}).get("cellId")
    except Exception:  # noqa: BLE001 - older kernels: no parent metadata
        cell = None
    return cell, count


def _needs_bundle() -> bool:
    if not in_notebook() or _BUNDLE_STATE["mode"] == "always" or "google.colab" in sys.modules:
        return True
    cell, count = _cell_and_count()
    sent_cell, sent_count = _BUNDLE_STATE["cell"], _BUNDLE_STATE["count"]
    first = sent_count is None
    # the cell that carried it runs again: its old output (and the bundle) is being replaced
    rerun = cell is not None and cell == sent_cell and count != sent_count
    if first or rerun:
        _BUNDLE_STATE.update(cell=cell, count=count)
        return True
    return False


def notebook_fragment(html: str) -> str:
    """A fragment for a notebook output: the circuitsvis bundle kept only when this kernel has not
    sent it yet (see :func:`notebook_bundle`); pages without circuitsvis views pass unchanged."""
    from ._page import circuitsvis_bundle

    bundle = circuitsvis_bundle()
    if bundle not in html or _needs_bundle():
        return html
    return html.replace(bundle, _OMITTED, 1)


class HTMLDisplayMixin(metaclass=abc.ABCMeta):
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
        return notebook_fragment(self.to_html(full=False))

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

            display(HTML(notebook_fragment(self.to_html(full=False))))
            return None
        fd, name = tempfile.mkstemp(prefix="tlprobes-", suffix=".html")
        os.close(fd)
        path = self.save_html(name)
        webbrowser.open(path.resolve().as_uri())
        return path


def _register_results() -> None:
    """Captures and results display through their own ``Displayable`` base (kept free of the
    renderers so ``import tlprobes`` stays light); they count as displayable here."""
    from .._result import Displayable

    HTMLDisplayMixin.register(Displayable)


_register_results()
