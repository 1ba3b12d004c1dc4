"""Shard plans: fixed, contiguous prompt ranges whose boundaries never depend on the worker count.

::

    >>> from tlprobes._shards.plan import Plan
    >>> plan = Plan(n_prompts=10, shard_size=4, batch_size=2)
    >>> [(s.start, s.stop) for s in plan.shards]
    [(0, 4), (4, 8), (8, 10)]
    >>> plan.assign(world_size=2, rank=1)
    [1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ArgumentError, InputError

__all__ = ["Plan", "Shard", "DEFAULT_SHARDS_PER_BATCH", "check_shard_size"]

DEFAULT_SHARDS_PER_BATCH = 64  # default shard size = 64 batches (commit cost well under 5%)


@dataclass(frozen=True)
class Shard:
    """Prompts ``start`` (inclusive) to ``stop`` (exclusive), number ``index`` of the plan."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"

    def __len__(self) -> int:
        return self.stop - self.start


def check_shard_size(shard_size: Any, batch_size: int) -> int:
    """``shard_size`` as a positive multiple of ``batch_size`` (``None``: 64 batches)."""
    if shard_size is None:
        return DEFAULT_SHARDS_PER_BATCH * batch_size
    if isinstance(shard_size, bool) or not isinstance(shard_size, int):
        raise ArgumentError(f"shard_size must be a positive int or None, got "
                            f"{type(shard_size).__name__} {shard_size!r}")
    if shard_size < 1 or shard_size % batch_size:
        lo = batch_size
        raise InputError(f"shard_size {shard_size!r} must be a positive multiple of batch_size "
                         f"{batch_size} (valid: {lo}, {2 * lo}, {4 * lo}, ...), so every shard "
                         "runs the same batches as one process would")
    return shard_size


@dataclass(frozen=True)
class Plan:
    """The shards of ``n_prompts`` prompts: ``shard_size`` each (a multiple of ``batch_size``)."""

    n_prompts: int
    shard_size: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.n_prompts < 1:
            raise InputError(f"a sharded run needs at least one prompt, got {self.n_prompts}")
        check_shard_size(self.shard_size, self.batch_size)

    @property
    def shards(self) -> list[Shard]:
        return [Shard(i, a, min(a + self.shard_size, self.n_prompts))
                for i, a in enumerate(range(0, self.n_prompts, self.shard_size))]

    def __len__(self) -> int:
        return -(-self.n_prompts // self.shard_size)

    def assign(self, world_size: int, rank: int, among: list[int] | None = None) -> list[int]:
        """Shard indices that ``rank`` of ``world_size`` runs: ``rank, rank + W, ...`` (of ``among``)."""
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside world size {world_size} (valid: 0..{world_size - 1})")
        pool = range(len(self)) if among is None else among
        return [i for i in pool if i % world_size == rank]

    def to_dict(self) -> dict[str, Any]:
        return {"n_prompts": self.n_prompts, "shard_size": self.shard_size,
                "batch_size": self.batch_size, "n_shards": len(self),
                "ranges": [[s.start, s.stop] for s in self.shards]}
