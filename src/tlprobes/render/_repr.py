"""Notebook outputs: is this a kernel, and does this output carry the circuitsvis bundle?

    >>> from tlprobes.render import Page
    >>> html = Page("angles").add_text("mean angle 12.3 degrees")._repr_html_()
    >>> "mean angle" in html and in_notebook() is False
    True

Every output is self-contained (scripts inlined, images as data: URLs); nothing contacts the
network, unlike circuitsvis's own ``_repr_html_``, which pings google.com on every display.

In a notebook the 1.3 MB circuitsvis bundle travels with the first view of the kernel session only;
later outputs carry a few bytes and wait for ``window.CircuitsVis`` (outputs of a saved notebook run
in order when it is reopened, so they still draw). Re-running the cell that carried the bundle sends
it again. :func:`notebook_bundle` switches to ``"always"`` (Colab, where each output is its own
frame, always gets it). Files written by ``save_html`` are always whole and offline.
"""

from __future__ import annotations

import sys

from ._runtime import circuitsvis_bundle

__all__ = ["in_notebook", "notebook_bundle", "notebook_fragment"]


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
    bundle = circuitsvis_bundle()
    if bundle not in html or _needs_bundle():
        return html
    return html.replace(bundle, _OMITTED, 1)
