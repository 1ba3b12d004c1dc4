"""Engines run the pending shards of a :class:`ShardJob`; the caller merges the commits afterwards.

::

    >>> from tlprobes._shards.engines import get_engine
    >>> get_engine("local").info()["world_size"]
    1

``local`` runs every pending shard in this process (the default). ``torchrun`` uses
``torch.distributed`` over a gloo group: rank ``r`` of ``W`` runs pending shards ``r, r + W, ...``,
then every rank waits at a barrier and loads all commits, so each rank holds the same merged result
whatever ``W`` is. ``ray`` lives in :mod:`tlprobes._shards.ray_engine` (imported on first use).
Commits go to a folder every process can read (one machine, or a shared filesystem under SLURM).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._errors import InputError, TLProbesError, choices
from .commit import read_commit, start_attempt, write_commit
from .plan import Plan

__all__ = ["ShardJob", "LocalEngine", "TorchrunEngine", "ENGINES", "get_engine", "engine_name"]

T = TypeVar("T")

ENGINES: dict[str, str] = {
    "local": "tlprobes._shards.engines:LocalEngine",
    "torchrun": "tlprobes._shards.engines:TorchrunEngine",
    "ray": "tlprobes._shards.ray_engine:RayEngine",
}

_FAULT_COMMITS = 0  # commits made by this process (fault injection counts them)


def _fault_check() -> None:
    """``TLPROBES_FAULT_EXIT_AFTER_COMMITS=K`` [``TLPROBES_FAULT_RANK=r``]: exit(1) after K commits."""
    global _FAULT_COMMITS
    _FAULT_COMMITS += 1
    after = os.environ.get("TLPROBES_FAULT_EXIT_AFTER_COMMITS")
    if not after:
        return
    rank = os.environ.get("TLPROBES_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    if _FAULT_COMMITS >= int(after):
        os._exit(1)  # a crash: no cleanup, no barrier, exactly what a killed worker leaves


@dataclass
class ShardJob:
    """Everything needed to run any shard of one ``tp.run`` call in any process (see the package doc)."""

    plan: Plan
    out: Path
    fingerprint: dict[str, Any]
    digest: str
    probes: tuple[Any, ...]
    prompts: Any
    run_kwargs: dict[str, Any]
    attention_mask: Any = None
    model: Any = field(default=None, repr=False)
    model_spec: dict[str, Any] | None = None
    progress: bool = False

    def pending(self) -> list[int]:
        """Shard indices without a valid commit (hash-checked), ascending."""
        return [s.index for s in self.plan.shards
                if read_commit(self.out, s, self.digest) is None]

    def prompts_of(self, index: int) -> tuple[Any, Any]:
        s = self.plan.shards[index]
        mask = self.attention_mask[s.start:s.stop] if self.attention_mask is not None else None
        return self.prompts[s.start:s.stop], mask

    def run_shard(self, index: int, model: Any = None) -> None:
        """Run shard ``index`` and commit it (nothing to do if it already has a valid commit)."""
        from .._runner import run
        from .context import no_sharding

        shard = self.plan.shards[index]
        if read_commit(self.out, shard, self.digest) is not None:
            return
        attempt = start_attempt(self.out, shard)
        prompts, mask = self.prompts_of(index)
        t0 = time.perf_counter()
        with no_sharding():
            result = run(model if model is not None else self.model, prompts, *self.probes,
                         attention_mask=mask, **self.run_kwargs)
        compute = time.perf_counter() - t0
        write_commit(self.out, shard, result, fingerprint=self.digest, attempt=attempt,
                     device=str(result.meta.device), timings={"compute": compute})
        _fault_check()


def _pending_bar(job: ShardJob, todo: list[int], desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(todo, disable=not job.progress, desc=desc, unit="shard")


class LocalEngine:
    """One process runs every pending shard, in shard order."""

    name = "local"

    def __init__(self, **options: Any):
        if options:
            raise InputError(f"engine 'local' takes no options, got {choices(options)}")

    def info(self) -> dict[str, Any]:
        from .. import __version__

        return {"engine": "local", "version": __version__, "world_size": 1, "rank": 0,
                "replicas": 1, "device_maps": None}

    @property
    def is_main(self) -> bool:
        return True

    def on_main(self, fn: Callable[[], T]) -> T:
        return fn()

    def execute(self, job: ShardJob) -> None:
        for index in _pending_bar(job, job.pending(), "tlprobes shards"):
            job.run_shard(index)


class TorchrunEngine:
    """``torch.distributed`` (gloo; states stay on the CPU): rank r runs pending shards r, r+W, ..."""

    name = "torchrun"

    def __init__(self, **options: Any):
        if options:
            raise InputError(f"engine 'torchrun' takes no options, got {choices(options)}; the "
                             "number of workers is torchrun's --nproc-per-node")
        import torch.distributed as dist

        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            raise InputError("engine 'torchrun' needs the process to be started by torchrun "
                             "(WORLD_SIZE and RANK are not set): `torchrun --nproc-per-node N -m "
                             "tlprobes run SUITE ...`; or use engine 'local'")
        if not dist.is_available():  # pragma: no cover - torch built without distributed
            raise TLProbesError("engine 'torchrun' needs torch.distributed, which this torch lacks")
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            import atexit

            dist.init_process_group(backend="gloo")
            atexit.register(_destroy_group)
        # a gloo group of our own even when the launcher made an NCCL one: states stay on the CPU
        self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def info(self) -> dict[str, Any]:
        import torch

        from .. import __version__

        return {"engine": "torchrun", "version": f"tlprobes {__version__}, torch {torch.__version__}",
                "world_size": self.world_size, "rank": self.rank, "replicas": self.world_size,
                "backend": "gloo", "device_maps": None}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self._group)

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0; every rank gets its value, or raises the error it raised."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except TLProbesError as err:
                outcome = ("err", err)
        kind, value = self.broadcast(outcome)
        if kind == "err":
            raise value
        return value

    def execute(self, job: ShardJob) -> None:
        pending = self.broadcast(job.pending() if self.is_main else None)
        mine = pending[self.rank::self.world_size]
        for index in _pending_bar(job, mine, f"tlprobes shards (rank {self.rank})"):
            job.run_shard(index)
        self.barrier()
        left = self.broadcast(job.pending() if self.is_main else None)
        if left:
            raise TLProbesError(f"shards {left} have no valid commit after every rank finished; "
                                "rerun with --resume")


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def engine_name(engine: Any) -> str:
    return engine if isinstance(engine, str) else getattr(engine, "name", type(engine).__name__)


_LIVE: dict[str, Any] = {}


def get_engine(engine: Any = "local", **options: Any) -> Any:
    """An engine instance by name (``local``, ``torchrun``, ``ray``), or ``engine`` if it is one."""
    if not isinstance(engine, str):
        if not all(hasattr(engine, a) for a in ("execute", "info", "on_main", "is_main")):
            raise InputError(f"engine {engine!r} is not an engine; valid: {choices(ENGINES)} or an "
                             "object with execute/info/on_main/is_main")
        return engine
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; valid: {choices(ENGINES)}")
    if engine == "torchrun" and not options and "torchrun" in _LIVE:
        return _LIVE["torchrun"]  # one process group per process
    module, _, cls = ENGINES[engine].partition(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise InputError(f"engine {engine!r} is not available here ({err}); install the extra "
                         f"`pip install tlprobes[{engine}]` or use engine 'local'") from None
    made = factory(**options)
    if engine == "torchrun":
        _LIVE["torchrun"] = made
    return made
