"""The ``ray`` engine: a pool of Ray actors, each holding one model replica, runs whole shards.

::

    >>> import ray                                                              # doctest: +SKIP
    >>> ray.init(num_cpus=2, include_dashboard=False, address="local")          # doctest: +SKIP
    >>> res = tp.run(model, prompts, tp.ResidualMean(), shard_size=64, out="runs/big",
    ...              engine="ray")                                              # doctest: +SKIP

    tlprobes run SUITE --engine ray --replicas 4 --gpus-per-replica 1

Each actor loads the model once from the job's ``model_spec`` (a suite run with a named model: a
name or a local folder, loaded with :func:`tlprobes.load_model` on the actor's device), else from the
engine's ``model=`` option (``tp.run(model, ..., engine=RayEngine(model="default"))``), else from a
copy of the live model shipped through Ray's object store when it pickles (a TransformerBridge does
not: then pass ``model=``). The driver hands one pending shard at a time
to each idle actor; an actor runs it with :meth:`ShardJob.run_shard`, which writes the same commit
as every other engine. When an actor dies (a crash, a killed process, a lost node) the driver
replaces it with a fresh actor and hands the same shard out again: only that shard is redone, the
commits of the others stand. A shard that fails ``max_attempts`` times stops the run with a
:class:`~tlprobes.TLProbesError`; rerunning with ``--resume`` computes only what is missing.

Ray is an optional extra (``pip install 'tlprobes[ray]'``). When Ray is not initialised the engine
starts a local instance (``ray.init(address=..., include_dashboard=False)``); tests start their own
with explicit ``num_cpus``.

Fault injection (tests): ``TLPROBES_FAULT_RAY_KILL_SHARD=i`` makes the actor that first starts shard
``i`` record the start and exit with status 1 before committing it (once per call folder: a marker
file in it records that the fault fired), exactly as a killed worker would.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .._errors import InputError, MissingExtraError, TLProbesError, choices

__all__ = ["RayEngine"]

T = TypeVar("T")

_FAULT_ENV = "TLPROBES_FAULT_RAY_KILL_SHARD"
_FAULT_MARK = ".ray-fault-fired"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise MissingExtraError(
            "engine 'ray' needs the optional package 'ray', which is not installed; install it with "
            "`pip install 'tlprobes[ray]'`, or use engine 'local' or 'torchrun'"
        ) from err
    return ray


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"engine 'ray': {name}={value!r} is not valid; give a positive integer")
    return value


def _device_info(model: Any) -> dict[str, Any]:
    """Where a replica's model sits: its device and, for a spread model, the HF device map."""
    from .._tl.adapter import adapter_for

    hf = getattr(getattr(model, "original_model", None), "hf_device_map", None)
    return {"device": adapter_for(model).meta.device,
            "device_map": {k: str(v) for k, v in hf.items()} if hf else None}


class _Replica:
    """One model replica (the body of the Ray actor; a plain class so it can be tested without Ray)."""

    def __init__(self, job: Any, model_ref: Any, gpus: int, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.job, self.model_ref, self.gpus = job, model_ref, gpus
        self.model: Any = None

    def _load(self) -> Any:
        if self.model is not None:
            return self.model
        spec = self.job.model_spec
        if spec is not None:
            from ..models import load_model

            device = spec.get("device") or "cpu"
            if self.gpus and str(device).startswith("cuda"):
                device = "cuda"  # Ray made this actor's GPUs the visible ones
            self.model = load_model(str(spec["name"]), device=device,
                                    compat=bool(spec.get("compat", False)))
        else:
            self.model = self.model_ref[0] if isinstance(self.model_ref, list) else self.model_ref
        return self.model

    def info(self) -> dict[str, Any]:
        import socket

        return {"host": socket.gethostname(), "pid": os.getpid(), "gpus": self.gpus,
                **_device_info(self._load())}

    def run(self, index: int) -> int:
        model = self._load()
        fault = os.environ.get(_FAULT_ENV)
        if fault is not None and int(fault) == index:
            mark = Path(self.job.out) / _FAULT_MARK
            try:
                fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                from .commit import start_attempt

                start_attempt(Path(self.job.out), self.job.plan.shards[index])  # the shard started
                os._exit(1)  # ... and its worker crashed: no commit, no cleanup
        self.job.run_shard(index, model=model)
        return index


class RayEngine:
    """Ray actors, one model replica each, run whole shards; a dead actor is replaced and only its
    shard is redone.

    Args:
        replicas: number of actors (model replicas); at most the number of pending shards start.
        gpus_per_replica: GPUs Ray reserves for each actor (``0``: CPU actors).
        cpus_per_replica: CPUs Ray reserves for each actor (and its torch threads).
        max_attempts: how often one shard may be started before the run gives up.
        address: the Ray cluster to join when Ray is not yet initialised (``None``: start a local one).
        model, compat: the model each actor loads (``tlprobes.load_model(model, compat=compat)``)
            when the job names none (a ``tp.run`` given a live model).

    Example::

        >>> RayEngine(replicas=2).info()["replicas"]                            # doctest: +SKIP
        2
    """

    name = "ray"

    def __init__(self, *, replicas: int = 1, gpus_per_replica: int = 0, cpus_per_replica: int = 1,
                 max_attempts: int = 3, address: str | None = None, model: Any = None,
                 compat: bool = False, **options: Any) -> None:
        if options:
            raise InputError(f"engine 'ray' has no option {choices(options)}; valid: 'replicas', "
                             "'gpus_per_replica', 'cpus_per_replica', 'max_attempts', 'address', "
                             "'model', 'compat'")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise InputError(f"engine 'ray': model={model!r} must be a model name or a local folder "
                             "that each actor loads with tlprobes.load_model")
        self.model = None if model is None else str(model)
        self.compat = bool(compat)
        self.replicas = _positive("replicas", replicas)
        if isinstance(gpus_per_replica, bool) or not isinstance(gpus_per_replica, int) \
                or gpus_per_replica < 0:
            raise InputError(f"engine 'ray': gpus_per_replica={gpus_per_replica!r} is not valid; give "
                             "an integer >= 0")
        self.gpus_per_replica = gpus_per_replica
        self.cpus_per_replica = _positive("cpus_per_replica", cpus_per_replica)
        self.max_attempts = _positive("max_attempts", max_attempts)
        self.address = address
        self.ray = _import_ray()
        self._replica_info: list[dict[str, Any]] = []
        self._restarts = 0
        self._assignment: dict[int, list[int]] = {}

    # -- the engine protocol --------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from .. import __version__

        return {"engine": "ray", "version": f"tlprobes {__version__}, ray {self.ray.__version__}",
                "world_size": self.replicas, "rank": 0, "replicas": self.replicas,
                "gpus_per_replica": self.gpus_per_replica, "cpus_per_replica": self.cpus_per_replica,
                "device_maps": [r.get("device_map") or r.get("device") for r in self._replica_info]
                or None,
                "replica_info": self._replica_info, "actor_restarts": self._restarts,
                "assignment": {str(k): v for k, v in sorted(self._assignment.items())}}

    @property
    def is_main(self) -> bool:
        return True  # the driver writes every output; actors only write shard commits

    def on_main(self, fn: Callable[[], T]) -> T:
        return fn()

    def execute(self, job: Any) -> None:
        """Run every pending shard of ``job`` on the actor pool; return when all are committed."""
        import dataclasses

        ray = self.ray
        todo = deque(job.pending())
        if not todo:
            return
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, ignore_reinit_error=True,
                     log_to_driver=False)
        spec = job.model_spec
        if spec is None and self.model is not None:
            from .._tl.adapter import adapter_for

            device = adapter_for(job.model).meta.device if job.model is not None else "cpu"
            spec = {"name": self.model, "device": device, "compat": self.compat}
        remote_job = dataclasses.replace(job, model=None, progress=False, model_spec=spec)
        model_ref = None
        if spec is None:
            if job.model is None:
                raise InputError("engine 'ray' needs a model: a live model or a model_spec")
            try:
                model_ref = [ray.put(job.model)]  # in a list: the actor gets the ref, fetched once
            except Exception as err:  # noqa: BLE001 - Ray raises TypeError or its own error types
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise InputError(
                    f"engine 'ray' cannot send this {type(job.model).__name__} to its actors ({first[:200]}); "
                    "name the model each actor loads: engine=RayEngine(model='default' or a local "
                    "folder), or run a suite (`tlprobes run SUITE --engine ray`)"
                ) from None
        env = {k: v for k, v in os.environ.items() if k.startswith("TLPROBES_FAULT_")}
        actor_cls = ray.remote(_Replica).options(
            num_cpus=self.cpus_per_replica, num_gpus=self.gpus_per_replica, max_restarts=0,
            max_task_retries=0, runtime_env={"env_vars": env} if env else None)

        def start() -> Any:
            return actor_cls.remote(remote_job, model_ref, self.gpus_per_replica, self.cpus_per_replica)

        slots = [start() for _ in range(min(self.replicas, len(todo), self._capacity()))]
        started: dict[int, int] = {}
        inflight: dict[Any, tuple[int, int]] = {}  # object ref -> (slot, shard)
        idle = deque(range(len(slots)))
        bar = _bar(job, len(todo))
        try:
            while todo or inflight:
                while todo and idle:
                    slot, index = idle.popleft(), todo.popleft()
                    started[index] = started.get(index, 0) + 1
                    self._assignment.setdefault(slot, []).append(index)
                    inflight[slots[slot].run.remote(index)] = (slot, index)
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                slot, index = inflight.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:  # the actor died: replace it, redo its shard
                    self._restarts += 1
                    ray.kill(slots[slot], no_restart=True)
                    slots[slot] = start()
                    self._retry(index, started, todo, "its actor died")
                except ray.exceptions.RayTaskError as err:
                    cause = err.as_instanceof_cause()
                    if isinstance(cause, TLProbesError):
                        raise cause from None  # a user error: the same on every attempt
                    self._retry(index, started, todo, f"{type(cause).__name__}: {cause}")
                else:
                    bar.update(1)
                idle.append(slot)
            self._replica_info = [ray.get(a.info.remote()) for a in slots]
        finally:
            bar.close()
            for actor in slots:
                ray.kill(actor, no_restart=True)
        left = job.pending()
        if left:
            raise TLProbesError(f"engine 'ray': shards {left} have no valid commit after every "
                                "actor finished; rerun with --resume")

    def _capacity(self) -> int:
        """How many replicas the cluster can hold at once (more would wait forever for resources
        the running ones keep until the end)."""
        total = self.ray.cluster_resources()
        fits = int(total.get("CPU", 0) // self.cpus_per_replica)
        if self.gpus_per_replica:
            fits = min(fits, int(total.get("GPU", 0) // self.gpus_per_replica))
        if fits < 1:
            raise InputError(
                f"engine 'ray': one replica needs {self.cpus_per_replica} CPU(s) and "
                f"{self.gpus_per_replica} GPU(s), but the Ray cluster has {total.get('CPU', 0):g} "
                f"CPU(s) and {total.get('GPU', 0):g} GPU(s); lower --gpus-per-replica or "
                "cpus_per_replica, or join a bigger cluster"
            )
        if fits < self.replicas:
            import warnings

            warnings.warn(f"engine 'ray': the cluster holds {fits} of the {self.replicas} replicas "
                          "asked for; running with {fits}".replace("{fits}", str(fits)), stacklevel=3)
        return fits

    def _retry(self, index: int, started: dict[int, int], todo: deque, why: str) -> None:
        if started[index] >= self.max_attempts:
            raise TLProbesError(f"engine 'ray': shard {index} failed {started[index]} times (last: "
                                f"{why}); rerun with --resume to compute the missing shards")
        todo.appendleft(index)  # only this shard is redone


def _bar(job: Any, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not job.progress, desc="tlprobes shards (ray)", unit="shard")

