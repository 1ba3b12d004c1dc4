"""Scaling curves: time and peak memory of a streaming run against the number of prompts and the context.

    python bench/scaling.py                      # both curves, overhead-size model (12 x 64), CPU, ~5 min
    python bench/scaling.py --curve prompts --counts 64,256,1024,4096
    python bench/scaling.py --curve context --seqs 128,256,512,1024
    python bench/scaling.py --device cuda --size small

The task is the same for every method: the running sum of every residual state x_0..x_L over all
tokens and the sum of their squared norms (what ``tp.ResidualMean()`` keeps), batch by batch:

* ``tp``: ``tp.run(model, tokens, tp.ResidualMean(), batch_size=B)`` (SDPA attention: no probe
  needs a pattern);
* ``rwc``: a loop over batches of ``run_with_cache(names_filter=<the L+1 residual hook names>)``,
  adding up each batch's states and dropping the cache (TL's bridge, eager attention);
* ``nnsight``: the same loop with nnsight ``.save()`` on the HF model (eager and SDPA rows).

Each (method, point) runs in a fresh subprocess: one warm-up batch, then one timed call over all
prompts, whose peak memory is read as the high-water mark minus the memory with the model loaded
before any forward pass (``_measure.py``). Methods are interleaved (the order rotates per point) and
the table reports each method's time and memory as ratios to ``rwc`` at the same point, so load
from other processes on a shared machine moves all methods of a point alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if (ROOT / "src" / "tlprobes").is_dir():
    sys.path.insert(1, str(ROOT / "src"))

from _models import SIZES  # noqa: E402

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
METHODS = ("tp", "rwc", "nnsight", "nnsight_sdpa")


def _task(method: str, s: Any, tokens: Any, batch: int, nn_model: Any) -> Any:
    """One call of ``method`` over all of ``tokens``: (sum [L+1, d] float64, sum_sq [L+1], count)."""
    import torch

    import tlprobes as tp

    L = s.n_layers
    if method == "tp":
        r = tp.run(s.bridge, tokens, tp.ResidualMean(), batch_size=batch, progress=False,
                   device="cpu" if s.device == "cpu" else None).residual_mean
        return r.sum, r.sum_sq_norm, r.count
    total = None
    sq = None
    for start in range(0, tokens.shape[0], batch):
        tb = tokens[start:start + batch]
        if method == "rwc":
            names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
            _, cache = s.bridge.run_with_cache(tb, names_filter=names)
            states = [cache[n] for n in names]
        else:
            saved: list[Any] = []
            s.hf.config._attn_implementation = "sdpa" if method == "nnsight_sdpa" else "eager"
            try:
                with nn_model.trace(tb):
                    for l in range(L):
                        saved.append(nn_model.transformer.h[l].input.save())
                    saved.append(nn_model.transformer.h[L - 1].output.save())
            finally:
                s.hf.config._attn_implementation = "eager"
            states = [x[0] if isinstance(x, tuple) else x for x in saved]
        x = torch.stack([st.double().sum((0, 1)) for st in states])
        q = torch.stack([st.double().pow(2).sum((0, 1, 2)) for st in states])
        total = x if total is None else total + x
        sq = q if sq is None else sq + q
        del states
    return total, sq, torch.tensor(tokens.numel())


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from _measure import floor_cpu, floor_cuda, measure_cpu, measure_cuda
    from _models import build, make_tokens

    cuda = args.device.startswith("cuda")
    s = build(args.size, args.batch, args.seq, args.device, bridge=args.worker in ("tp", "rwc"))
    tokens = make_tokens(args.n, args.seq, SIZES[args.size]["vocab"]).to(args.device)
    nn_model = None
    if args.worker.startswith("nnsight"):
        from nnsight import NNsight

        nn_model = NNsight(s.hf)
    floor = floor_cuda() if cuda else floor_cpu()

    def call() -> Any:
        with torch.no_grad():
            return _task(args.worker, s, tokens, args.batch, nn_model)

    with torch.no_grad():  # warm-up: one batch
        _task(args.worker, s, tokens[: args.batch], args.batch, nn_model)
    m = (measure_cuda if cuda else measure_cpu)(lambda: _timed(call, cuda), floor)
    out = {"time_s": _LAST["t"], **{k: m[k] for k in ("total", "peak")}, "how": m["how"]}
    print("RESULT " + json.dumps(out), flush=True)


_LAST: dict[str, float] = {}


def _timed(call: Any, cuda: bool) -> Any:
    import torch

    t0 = time.perf_counter()
    out = call()
    if cuda:
        torch.cuda.synchronize()
    _LAST["t"] = time.perf_counter() - t0
    return out


def point(method: str, n: int, seq: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--size", args.size,
           "--n", str(n), "--seq", str(seq), "--batch", str(args.batch), "--device", args.device,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV},
                          timeout=args.worker_timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout)[-600:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--curve", choices=("both", "prompts", "context"), default="both")
    p.add_argument("--size", choices=list(SIZES), default="overhead")
    p.add_argument("--counts", default="64,256,1024,4096", help="numbers of prompts (prompts curve)")
    p.add_argument("--seqs", default="128,256,512,1024", help="context lengths (context curve)")
    p.add_argument("--seq", type=int, default=64, help="tokens per prompt on the prompts curve")
    p.add_argument("--n", type=int, default=16, help="prompts on the context curve")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--worker-timeout", type=int, default=900)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import importlib.util

    methods = [m for m in args.methods.split(",") if m]
    if importlib.util.find_spec("nnsight") is None:
        methods = [m for m in methods if not m.startswith("nnsight")]
    curves = []
    if args.curve in ("both", "prompts"):
        curves.append(("prompts", [(int(n), args.seq) for n in args.counts.split(",")]))
    if args.curve in ("both", "context"):
        curves.append(("context", [(args.n, int(q)) for q in args.seqs.split(",")]))
    doc: dict[str, Any] = {"size": args.size, "batch": args.batch, "device": args.device,
                           "threads": args.threads, "loadavg_at_start": os.getloadavg(), "curves": {}}
    lines = []
    for curve, points in curves:
        rows = []
        for i, (n, seq) in enumerate(points):
            order = methods[i % len(methods):] + methods[: i % len(methods)]
            res = {m: point(m, n, seq, args) for m in order}
            for m in methods:
                print(f"[scaling] {curve} n={n} seq={seq} {m}: {res[m]}", flush=True)
            rows.append({"n": n, "seq": seq, "results": res})
        doc["curves"][curve] = rows
        lines += _table(curve, rows, methods)
    table = "\n".join(lines)
    print("\n" + table)
    doc["table_markdown"] = table
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    (out / f"scaling-{args.size}-{dev}-{stamp}.json").write_text(json.dumps(doc, indent=1))


def _table(curve: str, rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    head = "prompts" if curve == "prompts" else "tokens per prompt"
    cols = " | ".join(f"{m} time | {m} mem" for m in methods)
    lines = ["", f"| {head} | {cols} | tp / rwc time | tp / rwc mem |",
             "|---:|" + "---:|" * (2 * len(methods) + 2)]
    for r in rows:
        res = r["results"]
        cells = []
        for m in methods:
            v = res.get(m, {})
            if "error" in v:
                cells += ["error", "error"]
            else:
                cells += [f"{v['time_s']:.2f} s", f"{v['total'] / 2**20:,.1f} MiB"]
        tp_, rw = res.get("tp", {}), res.get("rwc", {})
        ok = "time_s" in tp_ and "time_s" in rw
        ratios = [f"{tp_['time_s'] / rw['time_s']:.2f}x", f"{tp_['total'] / rw['total']:.2f}x"] if ok else ["-", "-"]
        lines.append(f"| {r['n'] if curve == 'prompts' else r['seq']} | " + " | ".join(cells + ratios) + " |")
    return lines


if __name__ == "__main__":
    main()
