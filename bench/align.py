"""Memory and time of Procrustes across tokenizers at real vocabulary sizes (issue 17).

Two random embedding matrices the size of Gemma 3 270M's (262,144 x 640) and SmolLM2-135M's
(49,152 x 576), float32 like the models hold them, with a planted rotation on ``--shared`` word
pairs (B's rows of those words = A's rows @ R + noise, R a 640 -> 576 orthonormal map). The measured
call is what the procrustes study does with them, plus retrieval over B's *whole* vocabulary:

1. copy the shared words' rows (float64) out of both matrices (``WordAlignment.rows``);
2. ``map_embeddings(..., search="all", max_queries=1000)``: Procrustes fit on 80 %, P@1 by NN, CSLS
   and inverted softmax for test/train/shuffled, every held-out word searched among all shared words;
3. ``retrieval_ranks`` of the mapped held-out words against all 49,152 rows of B, hubness measured
   against every mapped shared word of A, for NN, CSLS and ISF (blockwise).

Peak memory: the kernel's RSS high-water mark during the call minus RSS before it (bench/_measure.py),
and tracemalloc's peak of Python/numpy allocations, each compared with the size of the two matrices.
The dense alternative (one query x target matrix) is stated, not run.

    python bench/align.py                 # a few minutes on 2 cores
    python bench/align.py --shared 5000   # smaller
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab-a", type=int, default=262_144)
    ap.add_argument("--d-a", type=int, default=640)
    ap.add_argument("--vocab-b", type=int, default=49_152)
    ap.add_argument("--d-b", type=int, default=576)
    ap.add_argument("--shared", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the row as JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from _measure import measure_cpu

    from tlprobes.analysis import map_embeddings
    from tlprobes.analysis._align import WordAlignment, retrieval_ranks

    g = torch.Generator().manual_seed(0)
    EA = torch.randn(args.vocab_a, args.d_a, generator=g) * 0.02
    EB = torch.randn(args.vocab_b, args.d_b, generator=g) * 0.02
    rng = np.random.default_rng(0)
    ia = rng.choice(args.vocab_a, args.shared, replace=False)
    ib = rng.choice(args.vocab_b, args.shared, replace=False)
    R = torch.linalg.qr(torch.randn(args.d_a, args.d_a, generator=g))[0][:, : args.d_b]
    with torch.no_grad():
        EB[ib] = EA[ia] @ R + 0.002 * torch.randn(args.shared, args.d_b, generator=g)
    al = WordAlignment([f"w{i}" for i in range(args.shared)], [(int(i),) for i in ia],
                       [(int(i),) for i in ib], "single", args.shared, {}, {})
    mat_bytes = EA.numel() * 4 + EB.numel() * 4
    out: dict = {}

    def call():
        t = time.perf_counter()
        A, B = al.rows(EA, "a"), al.rows(EB, "b")
        m = map_embeddings(A, B, search="all", max_queries=args.queries, center=True)
        test = m.test_rows[: args.queries]
        q = m.procrustes.transform(A[test])
        src = m.procrustes.transform(A)
        gold = ib[test]
        full = {meth: float((retrieval_ranks(q, EB.numpy(), gold, method=meth, sources=src) < 1).mean())
                for meth in ("nn", "csls", "isf")}
        out["seconds"] = time.perf_counter() - t
        out["scores"] = m.scores["test"]
        out["full_vocab_p_at_1"] = full
        out["n_test"] = int(len(test))
        return m

    tracemalloc.start()  # numpy reports its buffers to tracemalloc: both peaks from one call
    mem = measure_cpu(call)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    mib = 2**20
    row = {
        "shapes": f"{args.vocab_a} x {args.d_a} vs {args.vocab_b} x {args.d_b} (float32)",
        "shared": args.shared,
        "matrices_MiB": round(mat_bytes / mib, 1),
        "peak_rss_above_baseline_MiB": round(mem["peak"] / mib, 1),
        "peak_rss_over_matrices": round(mem["peak"] / mat_bytes, 3),
        "tracemalloc_peak_MiB": round(traced / mib, 1),
        "tracemalloc_over_matrices": round(traced / mat_bytes, 3),
        "how": mem["how"],
        "seconds": round(out["seconds"], 2),
        "test_p_at_1_among_shared": {k: round(v, 4) for k, v in out["scores"].items() if k.startswith("p_at")},
        "held_out_p_at_1_among_all_of_B": out["full_vocab_p_at_1"],
        "n_held_out_scored": out["n_test"],
        "dense_alternatives_MiB": {
            "held-out x all of B, float64": round(out["n_test"] * args.vocab_b * 8 / mib, 1),
            "all of B x all of A (CSLS hubness over the vocabularies), float64":
                round(args.vocab_a * args.vocab_b * 8 / mib, 1),
        },
        "threads": args.threads,
    }
    print(json.dumps(row, indent=2))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
