"""Sharded, resumable runs: fixed prompt ranges committed atomically, merged in shard order.

::

    >>> res = tp.run(model, prompts, tp.ResidualMean(), shard_size=64, out="runs/big")  # doctest: +SKIP
    >>> res = tp.run(model, prompts, tp.ResidualMean(), shard_size=64, out="runs/big",
    ...              resume=True)        # recomputes only shards without a valid commit  # doctest: +SKIP

The contract (engines code against it; ``data`` writes the Ray engine in ``ray_engine.py``)
------------------------------------------------------------------------------------------
**Plan** (:mod:`.plan`). ``Plan(n_prompts, shard_size, batch_size)`` cuts ``range(n_prompts)`` into
``Shard(index, start, stop)``: contiguous, ``shard_size`` a multiple of ``batch_size``, the last one
shorter. Boundaries depend on nothing else (never on the number of workers), so any engine and any
worker count can resume any run.

**Call directory** (one per ``tp.run`` call; a suite's work dir holds ``call-000/``, ``call-001/`` ...)::

    OUT/
      run.json                 fingerprint + plan, written once (resume compares it, names what differs)
      shard-000000/            one committed shard: a temp dir renamed into place when complete
        state.safetensors      Result.state_dict() via tlprobes._state.save_state (no pickle)
        rows.parquet           per-prompt rows keyed by prompt index (skipped without pyarrow)
        shard.json             range, attempt, host, pid, device, timings, sha256 of every file
      .attempts/shard-000003   one line per start of that shard (attempt number; `status` "running")

A shard counts as done only if its ``shard.json`` parses and every listed file's SHA-256 matches;
anything else is treated as missing and redone (never merged).

**ShardJob** (:mod:`.engines`): everything needed to run any shard in any process.

- ``job.plan: Plan``, ``job.out: Path`` (the call directory), ``job.fingerprint: dict``
- ``job.pending() -> list[int]``: shard indices without a valid commit, ascending.
- ``job.run_shard(index, model=None) -> None``: run shard ``index`` and commit it. In the process
  that called ``tp.run`` the model is ``job.model``; a worker process that loaded its own copy passes
  ``model=``. Idempotent: a shard that already has a valid commit is left alone.
- ``job.model_spec: dict | None``: ``{"name", "device", "compat"}`` to load the model with
  ``tlprobes.load_model`` in a remote worker (set by the suite runner; ``None`` when ``tp.run`` was
  given a live model object only, then a remote engine must ship the model itself).
- the probes, prompts and run keywords are plain picklable attributes (``job.probes``,
  ``job.prompts``, ``job.run_kwargs``) for engines that send the job to other processes.

**Engine** (a class registered by name in :data:`.engines.ENGINES`: ``"local"``, ``"torchrun"``,
``"ray"`` -> ``tlprobes._shards.ray_engine:RayEngine``, imported lazily)::

    class Engine(Protocol):
        name: str
        def __init__(self, **options): ...       # ray: replicas=N, gpus_per_replica=K
        def info(self) -> dict: ...              # manifest: engine, version, world_size, rank,
                                                 # replicas, device_maps (JSON-able)
        @property
        def is_main(self) -> bool: ...           # this process writes outputs (rank 0; always for
                                                 # local and for the ray driver)
        def on_main(self, fn: Callable[[], T]) -> T: ...  # run fn on the main process only; every
                                                 # process gets its value or raises its error
        def execute(self, job: ShardJob) -> None: ...
            # Return only when every shard of job.plan has a valid commit (job.pending() == []),
            # on every process that called it. Which shards a process runs is the engine's choice
            # (torchrun: rank r runs pending shards i with i % W == r, then a barrier; ray: a pool
            # of actors, a dead actor's shard redispatched). Raise a TLProbesError if a shard keeps
            # failing. Never merge: the caller loads the commits and merges them in shard order
            # (so the result does not depend on the engine or on W).

After ``execute`` the caller (every process) runs :func:`.merge.merge_call`: loads every commit in
shard order and folds them with ``Result.merge``; counts are exact, float sums equal the
single-process run within 1e-12 relative (the batches are the same batches).

Fault injection (tests): ``TLPROBES_FAULT_EXIT_AFTER_COMMITS=K`` (with ``TLPROBES_FAULT_RANK=r``, the
rank from ``RANK``, default every rank) makes the process exit with status 1 after its K-th commit.
"""

from __future__ import annotations

__all__: list[str] = []
