"""Peak memory of a streaming run against the number of prompts, sharded and not (issue 15).

    python bench/shards_memory.py                        # 1,024 / 4,096 / 16,384 prompts x 32 tokens
    python bench/shards_memory.py --prompts 1024,4096 --seq 16   # quicker

The task: ``tp.run(model, tokens, tp.ResidualMean(), batch_size=32)`` on the shipped default model
(4 x 128) over random token ids (seed 0), once in one pass (``unsharded``) and once committed shard by
shard (``shard_size=1024, out=DIR``, then merged). Each point runs in a fresh subprocess (Linux):
the model is loaded and one warm-up call made, then the RSS high-water mark is reset
(``/proc/self/clear_refs``) and the peak above the RSS just before the call is read from ``VmHWM``
after it, with the result still alive. A streaming run's memory must not grow with the number of
prompts; what still grows is the merged result's token table (8 bytes per token).

Every point runs twice: with glibc's default allocator settings (what a user gets), and with its mmap
threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``, as ``bench/run.py`` does), so freed buffers
leave the process and the peak shows what is alive rather than what the heap keeps cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "tlprobes").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(n: int, seq: int, mode: str, threads: int) -> dict:
    import torch

    import tlprobes as tp

    torch.set_num_threads(threads)
    model = tp.load_model()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, model.cfg.d_vocab, (n, seq), generator=g)
    kwargs = {"batch_size": 32, "progress": False}
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "sharded":
            kwargs.update(shard_size=1024, out=Path(tmp) / "run")
        tp.run(model, tokens[:32], tp.ResidualMean(), batch_size=32, progress=False)  # warm-up
        import gc

        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        t0 = time.perf_counter()
        res = tp.run(model, tokens, tp.ResidualMean(), **kwargs)
        wall = time.perf_counter() - t0
        peak = _status_kib("VmHWM")
        assert res.residual_mean is not None
    return {"prompts": n, "seq": seq, "mode": mode, "wall_s": round(wall, 2),
            "peak_above_mib": round((peak - before) / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default="1024,4096,16384")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        n, mode, seq = int(args.worker[0]), args.worker[1], int(args.worker[2])
        print(json.dumps(worker(n, seq, mode, args.threads)))
        return
    rows = []
    for alloc, extra in (("glibc default", {}), ("mmap threshold 128 KiB",
                                                  {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        for mode in ("unsharded", "sharded"):
            for n in (int(x) for x in args.prompts.split(",")):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", str(n), mode, str(args.seq),
                     "--threads", str(args.threads)],
                    check=True, capture_output=True, text=True, env={**os.environ, **extra}).stdout
                rows.append({**json.loads(out.strip().splitlines()[-1]), "allocator": alloc})
                print(rows[-1], flush=True)
    print("\n| allocator | mode | prompts | tokens | peak above baseline | wall |\n"
          "|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['allocator']} | {r['mode']} | {r['prompts']:,} | {r['prompts'] * r['seq']:,} | "
              f"{r['peak_above_mib']} MiB | {r['wall_s']} s |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    dest = Path(args.out) / f"shards-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.write_text(json.dumps(rows, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
