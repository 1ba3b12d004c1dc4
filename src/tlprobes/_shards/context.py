"""The suite runner's sharding context: every ``tp.run`` call inside it becomes a sharded call.

A study calls ``tp.run`` one or more times; inside :func:`sharding` each call gets a stable folder
``WORK/call-000``, ``call-001``, ... (in call order, the same on every rank and every resume), so
study code does not change::

    >>> from tlprobes._shards.context import current
    >>> current() is None
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Sharding", "sharding", "current", "no_sharding"]


@dataclass
class Sharding:
    """Where and how the ``tp.run`` calls of one suite run are sharded."""

    work_dir: Path
    engine: Any
    resume: bool = False
    shard_size: int | None = None
    suite: dict[str, Any] | None = None
    model_spec: dict[str, Any] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0

    def next_call_dir(self) -> Path:
        path = self.work_dir / f"call-{self._next:03d}"
        self._next += 1
        return path

    @property
    def is_main(self) -> bool:
        return bool(self.engine.is_main)

    def manifest(self) -> dict[str, Any]:
        from .merge import PRECISION

        return {"work_dir": str(self.work_dir), **self.engine.info(), "resume": self.resume,
                "precision": PRECISION, "calls": self.calls}


_CURRENT: ContextVar[Sharding | None] = ContextVar("tlprobes_sharding", default=None)


def current() -> Sharding | None:
    return _CURRENT.get()


@contextlib.contextmanager
def sharding(ctx: Sharding | None) -> Iterator[Sharding | None]:
    """Make ``ctx`` the sharding of every ``tp.run`` call in the block (``None``: no change)."""
    if ctx is None:
        yield None
        return
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def no_sharding() -> Iterator[None]:
    """Inside a shard's own ``tp.run``: plain, unsharded."""
    token = _CURRENT.set(None)
    try:
        yield
    finally:
        _CURRENT.reset(token)
