"""Sharded runs: throughput against the number of torchrun workers, and the cost of shard commits.

    python bench/shards.py                          # 1 and 2 workers, 1024 prompts x 32 tokens, CPU
    python bench/shards.py --workers 1,2,4 --prompts 4096 --device cuda   # on a GPU machine
    python bench/shards.py --quick                  # a smoke test (128 prompts)

The task: ``tp.run(model, tokens, tp.ResidualMean(), tp.Steps(), batch_size=B, shard_size=S,
out=DIR, engine="torchrun")`` on the shipped default model (4 x 128) over random token ids (seed 0,
``--seq`` tokens each). Every worker count is its own ``torchrun`` launch (gloo, loopback), each
worker with ``--threads`` torch threads; "tokens/s" is all tokens over the wall time of the sharded
call on rank 0 (from before ``tp.run`` to the merged result: shards, barrier and merge included;
the model load is not). The results of every worker count are compared with the 1-worker run
(exact counts, float sums within 1e-12 relative).

Commit cost: a local run at the **default shard size** (64 batches) with the streaming probes and
with a dense ``tp.Residual(positions="last")``; the fraction is the sum over shards of ``commit``
time over ``compute`` time from each ``shard.json`` (goal: at most 5 %).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "tlprobes").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def _tokens(n: int, seq: int, vocab: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(1, vocab, (n, seq), generator=g)


def _probes(kind: str) -> list[Any]:
    import tlprobes as tp

    return [tp.ResidualMean(), tp.Steps()] if kind == "stream" else [tp.Residual(positions="last")]


def worker(args: argparse.Namespace) -> None:
    """One torchrun worker: the sharded call; rank 0 writes timings and the merged sums."""
    import torch

    import tlprobes as tp

    torch.set_num_threads(args.threads)
    model = tp.load_model(device=args.device)
    toks = _tokens(args.prompts, args.seq, model.cfg.d_vocab)
    import torch.distributed as dist

    from tlprobes._shards.engines import get_engine

    eng = get_engine("torchrun")
    dist.barrier()
    t0 = time.perf_counter()
    res = tp.run(model, toks, *_probes("stream"), batch_size=args.batch_size,
                 shard_size=args.shard_size, out=args.out, engine=eng, progress=False)
    wall = time.perf_counter() - t0
    if eng.is_main:
        m = res.residual_mean
        Path(args.report).write_text(json.dumps({
            "wall_s": wall, "tokens": int(res.inputs.attention_mask.sum()),
            "count": int(m.count), "sum": m.sum.tolist(), "angle_mean": float(
                res.steps.angle.double().nanmean()),
        }))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(w: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    report = tmp / f"w{w}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={w}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(HERE / "shards.py"),
           "--worker", "--out", str(tmp / f"w{w}"), "--report", str(report),
           "--prompts", str(args.prompts), "--seq", str(args.seq), "--batch-size",
           str(args.batch_size), "--shard-size", str(args.shard_size), "--threads",
           str(args.threads), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"torchrun with {w} workers failed:\n{done.stderr[-4000:]}")
    return json.loads(report.read_text())


def commit_cost(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    import tlprobes as tp

    torch.set_num_threads(args.threads)
    model = tp.load_model(device=args.device)
    from tlprobes._shards.plan import DEFAULT_SHARDS_PER_BATCH

    size = DEFAULT_SHARDS_PER_BATCH * args.batch_size
    n = max(args.prompts, 2 * size)
    toks = _tokens(n, args.seq, model.cfg.d_vocab)
    out = tmp / f"commit-{kind}"
    tp.run(model, toks, *_probes(kind), batch_size=args.batch_size, out=out, progress=False)
    metas = [json.loads((p / "shard.json").read_text()) for p in sorted(out.glob("shard-*"))]
    compute = sum(m["timings_s"]["compute"] for m in metas)
    commit = sum(m["timings_s"]["commit"] for m in metas)
    size_mb = sum((p / "state.safetensors").stat().st_size for p in out.glob("shard-*")) / 2**20
    return {"probes": kind, "shard_size": size, "shards": len(metas), "compute_s": compute,
            "commit_s": commit, "fraction": commit / compute, "state_mib": size_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.prompts, args.shard_size = 128, 32
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = {}
        for w in [int(x) for x in args.workers.split(",")]:
            rows[w] = launch(w, args, tmp)
        base = rows[min(rows)]
        print(f"{args.prompts} prompts x {args.seq} tokens, batch {args.batch_size}, shard "
              f"{args.shard_size}, {args.threads} thread(s) per worker, {args.device}")
        print("workers  tokens/s   wall s  speed-up  same numbers as 1 worker")
        import torch

        for w, r in rows.items():
            same = r["count"] == base["count"] and torch.allclose(
                torch.tensor(r["sum"], dtype=torch.float64),
                torch.tensor(base["sum"], dtype=torch.float64), rtol=1e-12, atol=0)
            print(f"{w:7d}  {r['tokens'] / r['wall_s']:8.0f}  {r['wall_s']:7.2f}  "
                  f"{base['wall_s'] / r['wall_s']:8.2f}  {same}")
        costs = [commit_cost(k, args, tmp) for k in ("stream", "dense")]
        print("commit cost at the default shard size (64 batches)")
        for c in costs:
            print(f"  {c['probes']:6s} {c['shards']} shards of {c['shard_size']}: commit "
                  f"{c['commit_s']:.3f} s / compute {c['compute_s']:.2f} s = "
                  f"{100 * c['fraction']:.2f} % (state {c['state_mib']:.2f} MiB)")
        if args.json:
            Path(args.json).write_text(json.dumps({"throughput": rows, "commit": costs,
                                                   "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
