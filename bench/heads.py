"""What per-head attribution costs: ``tp.HeadSteps`` vs ``run_with_cache`` + ``stack_head_results``.

    python bench/heads.py                        # GPT-2-small shape (12 x 768), batch 2 x 64, CPU
    python bench/heads.py --size tiny --rounds 3 # a smoke test
    python bench/heads.py --device cuda          # on a GPU (torch.cuda peak memory)

Same random-weight model and tokens as ``bench/run.py`` (``_models.build``; " her" planted once per
prompt). Methods, each returning the same numbers (per-head projection onto the step and onto x_l,
norm, DLA to the next token) at the selected positions:

* ``bare``: the bridge's forward pass, the floor;
* ``heads_target``: ``tp.run(..., tp.HeadSteps(positions=Target(her), baseline=Target(her, -1)))``;
* ``heads_all``: ``tp.HeadSteps(positions="all")`` (every token);
* ``rwc_heads``: ``run_with_cache`` of the hooks HeadSteps reads, then ``stack_head_results`` and
  the same scalars at the target and the word before it.

Time: round-robin in one process, the ratio to ``bare`` is the median over rounds of t / t_bare.
Memory: each method in a fresh subprocess, peak above the loaded model (``_measure.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if (HERE.parent / "src" / "tlprobes").is_dir():
    sys.path.insert(1, str(HERE.parent / "src"))
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("bare", "heads_target", "heads_all", "rwc_heads")


def make(name: str, s: Any) -> Any:
    import torch

    import tlprobes as tp
    from _models import her_id

    br, tokens = s.bridge, s.tokens
    her = her_id(br.cfg.d_vocab)
    if name == "bare":
        def call() -> Any:
            with torch.no_grad():
                return br(tokens).shape

        return call
    if name in ("heads_target", "heads_all"):
        probe = (tp.HeadSteps(positions=tp.Target(her), baseline=tp.Target(her, offset=-1))
                 if name == "heads_target" else tp.HeadSteps())

        def call() -> Any:
            return tp.run(br, tokens, probe, batch_size=tokens.shape[0], progress=False,
                          device=None).head_steps

        return call
    L, H = br.cfg.n_layers, br.cfg.n_heads
    names = [f"blocks.{l}.{h}" for l in range(L)
             for h in ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out")]
    names += [f"blocks.{L - 1}.hook_resid_post", "ln_final.hook_scale"]
    W_U = br.W_U.detach()

    def call() -> Any:
        with torch.no_grad():
            _, cache = br.run_with_cache(tokens, names_filter=names)
            heads = cache.stack_head_results(layer=-1)  # [L*H, batch, pos, d]: the big tensor
            b = torch.arange(tokens.shape[0])
            pos = (tokens == her).int().argmax(1)
            out = {}
            for tag, p in (("target", pos), ("baseline", pos - 1)):
                hd = heads[:, b, p].reshape(L, H, len(b), -1)
                x = torch.stack([cache[f"blocks.{l}.hook_resid_pre"][b, p] for l in range(L)])
                step = torch.stack([
                    (cache[f"blocks.{l}.hook_attn_out"] + cache[f"blocks.{l}.hook_mlp_out"])[b, p]
                    for l in range(L)
                ])
                u = step / step.norm(dim=-1, keepdim=True)
                xh = x / x.norm(dim=-1, keepdim=True)
                nxt = tokens[b, p + 1]
                normed = cache.apply_ln_to_stack(heads[:, b, p][:, :, None], layer=-1)[:, :, 0]
                dla = (normed * W_U[:, nxt].T).sum(-1).reshape(L, H, len(b))
                proj = (hd * u[:, None]).sum(-1), (hd * xh[:, None]).sum(-1)
                out[tag] = (*proj, hd.norm(dim=-1), dla)
            return out

    return call


def worker(args: argparse.Namespace) -> None:
    import torch

    from _measure import measure_cpu, measure_cuda
    from _models import build

    torch.set_num_threads(args.threads)
    s = build(args.size, args.batch, args.seq, args.device)
    call = make(args.worker, s)
    call()  # warm-up
    measure = measure_cuda if args.device.startswith("cuda") else measure_cpu
    print(json.dumps(measure(call)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    from _models import SIZES

    args.batch = args.batch or SIZES[args.size]["batch"]
    args.seq = args.seq or SIZES[args.size]["seq"]
    if args.worker:
        worker(args)
        return
    import torch

    from _models import build

    torch.set_num_threads(args.threads)
    s = build(args.size, args.batch, args.seq, args.device)
    calls = {m: make(m, s) for m in METHODS}
    for c in calls.values():
        c()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        order = METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]
        for m in order:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            calls[m]()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)
    report: dict[str, Any] = {"size": args.size, "batch": args.batch, "seq": args.seq,
                              "device": args.device, "threads": args.threads, "rounds": args.rounds,
                              "methods": {}}
    for m in METHODS:
        ratio = statistics.median(t / b for t, b in zip(times[m], times["bare"]))
        report["methods"][m] = {"median_s": statistics.median(times[m]), "time_vs_bare": ratio}
    if not args.no_memory:
        for m in METHODS:
            cmd = [sys.executable, __file__, "--worker", m, "--size", args.size, "--batch",
                   str(args.batch), "--seq", str(args.seq), "--device", args.device,
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            try:
                mem = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                mem = {"error": proc.stderr[-400:]}
            report["methods"][m]["memory"] = mem
        base = report["methods"]["bare"]["memory"].get("peak")
        for m in METHODS:
            mem = report["methods"][m]["memory"]
            if base and "peak" in mem:
                mem["peak_MiB"] = round(mem["peak"] / 2**20, 1)
    print(json.dumps(report, indent=1))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = f"heads-{args.size}-{args.device.split(':')[0]}.json"
    (out / name).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
