"""``tp.run(..., shard_size=, out=, engine=, resume=)``: the sharded path of :func:`tlprobes.run`.

::

    >>> import tlprobes as tp, tempfile
    >>> model = tp.load_model()
    >>> prompts = ["The cat sat.", "A dog ran.", "It rained.", "She left."]
    >>> out = tempfile.mkdtemp()
    >>> res = tp.run(model, prompts, tp.Residual(positions="last"), batch_size=2, shard_size=2,
    ...              out=out)
    >>> res.residual.resid.shape[1]
    4
    >>> sorted(p.name for p in __import__("pathlib").Path(out).glob("shard-*"))
    ['shard-000000', 'shard-000001']

Each shard is a plain ``tp.run`` over its prompt range (same batches as one process), committed
under ``out``; the commits are then merged in shard order. Without ``out`` (only ``shard_size``)
the shards are merged in memory. A run read back from its commits holds its captures on the CPU
(states travel and are saved on the CPU), whatever ``device`` the captures were made on.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._errors import ArgumentError, InputError
from .commit import fingerprint_digest
from .context import current, no_sharding
from .engines import ShardJob, get_engine
from .fingerprint import differences, fingerprint, prompts_hash
from .merge import RUN_JSON, describe_call, merge_call
from .plan import Plan, check_shard_size

__all__ = ["run_sharded", "wants_sharding"]


def wants_sharding(shard_size: Any, out: Any, engine: Any, resume: Any) -> bool:
    """Whether a ``tp.run`` call takes the sharded path."""
    if not isinstance(resume, bool):
        raise ArgumentError(f"resume must be True or False, got {resume!r}")
    if out is None and shard_size is None and current() is None:
        if engine != "local" or resume:
            what = f"engine={engine!r}" if engine != "local" else "resume=True"
            raise ArgumentError(f"{what} needs out= (the folder the shard commits go to)")
        return False
    return True


def _n_prompts(prompts: Any) -> int:
    if isinstance(prompts, str):
        return 1
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise InputError(f"token input must be a LongTensor [batch, pos], got shape "
                             f"{tuple(prompts.shape)}")
        return int(prompts.shape[0])
    return len(prompts)


def _open_call_dir(out: Path, run_json: dict[str, Any], resume: bool) -> None:
    """Create ``out/run.json`` or check it (resume: same fingerprint; else refuse a used folder)."""
    path = out / RUN_JSON
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{str(out)!r}: {RUN_JSON} is unreadable; delete the folder or choose "
                             "another out=") from None
        if not resume:
            raise InputError(f"out={str(out)!r} already holds a sharded run; pass resume=True "
                             "(--resume) to continue it, or choose another folder")
        diff = differences(old, run_json["fingerprint"])
        if diff:
            raise InputError(f"cannot resume {str(out)!r}: this run differs from the one in it ("
                             + "; ".join(diff) + "); rerun with the same settings, or choose "
                             "another out=")
        return
    if out.exists() and any(p.name != ".attempts" for p in out.iterdir()) and not resume:
        raise InputError(f"out={str(out)!r} exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RUN_JSON}.{os.getpid()}-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(run_json, indent=1, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def run_sharded(model: Any, prompts: Any, *probes: Any, shard_size: int | None = None,
                out: str | Path | None = None, engine: Any = "local", resume: bool = False,
                batch_size: int = 16, attention_mask: torch.Tensor | None = None,
                pad_to: int | str | None = None, progress: bool | None = None,
                **run_kwargs: Any) -> Any:
    """The sharded :func:`tlprobes.run` (see the module doc); returns the merged Result."""
    from .._adapter import adapter_for
    from .._runner import _as_sequences, _pad_width, run

    ctx = current()
    if ctx is not None and out is None:
        out = ctx.next_call_dir()
        engine, resume = ctx.engine, ctx.resume or resume
        shard_size = shard_size if shard_size is not None else ctx.shard_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        run(model, prompts, *probes, batch_size=batch_size)  # raises run's own error
    shard_size = check_shard_size(shard_size, batch_size)
    if isinstance(prompts, str):
        prompts = [prompts]
    elif not isinstance(prompts, (torch.Tensor, Sequence)):
        if not isinstance(prompts, Iterable):
            raise InputError(f"prompts must be a non-empty list of strings or token-id lists, "
                             f"got {type(prompts).__name__}")
        prompts = list(prompts)  # a dataset iterator: the plan needs the count (strings are small)
    n = _n_prompts(prompts)
    if pad_to == "longest":  # the longest of the whole run, not of a shard
        adapter = adapter_for(model)
        seqs, _ = _as_sequences(adapter, prompts, attention_mask, run_kwargs.get("prepend_bos"))
        pad_to = _pad_width(pad_to, seqs)
    kwargs = {"batch_size": batch_size, "pad_to": pad_to, "progress": False, **run_kwargs}
    plan = Plan(n_prompts=n, shard_size=shard_size, batch_size=batch_size)
    show = progress if progress is not None else len(plan) > 1
    if out is None:  # in-memory shards: the same merge, nothing written
        merged = None
        with no_sharding():
            for s in plan.shards:
                mask = attention_mask[s.start:s.stop] if attention_mask is not None else None
                part = run(model, prompts[s.start:s.stop], *probes, attention_mask=mask, **kwargs)
                merged = part if merged is None else merged.merge(part)
        return merged

    eng = get_engine(engine)
    out = Path(out)
    meta = adapter_for(model).meta.to_dict()
    settings = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                for k, v in sorted(kwargs.items()) if k not in ("progress", "batch_size")}
    fp = fingerprint(model=model, meta=meta, probes=[repr(p) for p in probes], settings=settings,
                     prompts=prompts_hash(prompts, attention_mask), n_prompts=n,
                     shard_size=shard_size, batch_size=batch_size,
                     suite=ctx.suite if ctx is not None else None)
    digest = fingerprint_digest(fp)
    run_json = {"tlprobes_shards": 1, "fingerprint": fp, "digest": digest, "plan": plan.to_dict()}
    eng.on_main(lambda: _open_call_dir(out, run_json, resume))
    job = ShardJob(plan=plan, out=out, fingerprint=fp, digest=digest, probes=tuple(probes),
                   prompts=prompts, attention_mask=attention_mask, run_kwargs=kwargs, model=model,
                   model_spec=ctx.model_spec if ctx is not None else None,
                   progress=bool(show) and eng.is_main)
    eng.execute(job)
    result = merge_call(out, plan, digest)
    if ctx is not None:
        ctx.calls.append(describe_call(out, plan, digest, eng.info()))
    return result
