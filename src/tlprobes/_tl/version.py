"""The installed TransformerLens version, read once per process (a leaf: the adapter and the loader
both ask here).

>>> tl_major_version() in (2, 3, 4)
True
"""

from __future__ import annotations

import functools
import importlib.metadata

__all__ = ["tl_version", "tl_major_version"]


@functools.cache
def tl_version() -> str:
    """The installed TransformerLens version string (``"unknown"`` for a source checkout).

    Read once per process: every other module asks here.
    """
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkouts
        return "unknown"


def tl_major_version() -> int:
    """The installed TransformerLens major version (2, 3 or 4).

    >>> tl_major_version() >= 2
    True
    """
    return int(tl_version().split(".")[0])
