"""Train the shipped default models: tokenizer, packing, training loop, head scores, model card.

Everything is deterministic from its seeds (the corpus seed fixes the text and the tokenizer; the
model seed fixes the initialisation and the batch order), runs on one CPU thread and needs no
network. ``scripts/train_default.py`` is the command-line front end::

    $ python scripts/train_default.py --seed 0 --out src/tlprobes/models/default_s0

or from Python (a tiny run, for tests)::

    >>> from tlprobes.models.training.train import TrainConfig, train_default   # doctest: +SKIP
    >>> cfg = TrainConfig(seed=0, steps=5, n_train_docs=200)            # doctest: +SKIP
    >>> card = train_default(cfg, "runs/tiny_model")                          # doctest: +SKIP
    >>> card["heldout_loss"] < card["unigram_loss"]                     # doctest: +SKIP
    True

``transformers`` and ``tokenizers`` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .corpus import corpus_split

__all__ = [
    "TrainConfig",
    "build_tokenizer",
    "pack_documents",
    "unigram_loss",
    "head_scores",
    "train_default",
    "write_model_card",
]

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one default model (the defaults are what ships)."""

    seed: int = 0
    corpus_seed: int = 0
    n_train_docs: int = 60_000
    n_heldout_docs: int = 2_000
    vocab_size: int = 1536
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_ctx: int = 128
    batch_size: int = 32
    steps: int = 2400
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 100
    prev_threshold: float = 0.4
    induction_threshold: float = 0.3
    induction_periods: tuple[int, ...] = (10, 20, 40)
    # copy curriculum (methods.md 6.7): this fraction of each batch holds packed pairs of random
    # blocks (R, R) of variable length; the loss weighs the inducible tokens of each second copy
    # 1 and every other token of those rows copy_other_weight
    copy_fraction: float = 0.5
    copy_lengths: tuple[int, int] = (6, 40)
    copy_other_weight: float = 0.05


# ---------------------------------------------------------------------------------------------
# Tokenizer and data
# ---------------------------------------------------------------------------------------------


def build_tokenizer(
    texts: Sequence[str], vocab_size: int = 1536, *, name: str = "tlprobes-default"
):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``; ``<|endoftext|>`` is id 0.

    The returned ``PreTrainedTokenizerFast`` carries ``name_or_path`` and ``add_bos_token=True``,
    which TransformerLens bridges require. Save it with ``save_pretrained(dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        add_bos_token=True,
        name_or_path=name,
        model_max_length=1_000_000,
    )


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    backend = tokenizer.backend_tokenizer
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def pack_documents(
    ids: Sequence[Sequence[int]], n_ctx: int, eot_id: int = 0
) -> Int[Tensor, "row pos"]:
    """Pack documents into rows of ``n_ctx`` tokens, each row starting with ``<|endoftext|>``.

    Each document is preceded by ``<|endoftext|>``; a document that does not fit is cut at the row
    end (its rest is dropped), so every row begins at a document start.
    """

    rows: list[list[int]] = []
    row: list[int] = []
    for doc in ids:
        row.extend([eot_id, *doc])
        if len(row) >= n_ctx:
            rows.append(row[:n_ctx])
            row = []
    return torch.tensor(rows, dtype=torch.long)


def unigram_loss(
    train: Int[Tensor, "row pos"], heldout: Int[Tensor, "row2 pos"], vocab_size: int
) -> float:
    """Cross-entropy (nats/token) of held-out targets under add-one train unigram frequencies."""

    counts = torch.bincount(train[:, 1:].reshape(-1), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[heldout[:, 1:].reshape(-1)].mean())


# ---------------------------------------------------------------------------------------------
# Head scores (plain HF, eager attention)
# ---------------------------------------------------------------------------------------------


def _attentions(
    model: Any, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "layer batch head pos pos"]:

    with torch.no_grad():
        out = model(tokens, output_attentions=True)
    return torch.stack(list(out.attentions))


def head_scores(
    model: Any,
    text_rows: Int[Tensor, "batch pos"],
    *,
    token_pool: Int[Tensor, " pool"],
    periods: Sequence[int] = (10, 20, 40),
    n_random: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Previous-token and induction scores per head, from HF ``output_attentions`` (eager).

    * previous-token score: mean over t >= 1 of ``A[t, t-1]`` on real text rows;
    * induction score: on ``<|endoftext|>`` + a random block of length P + the same block,
      the mean over second-block queries t of ``A[t, t-P+1]`` (the token after the earlier copy),
      averaged over the periods P (varied so a fixed-offset head cannot pass);
    * copy loss: mean loss on the first and on the second copy of the random block.

    Returns ``{"prev_token": [[layer][head]], "induction": [[layer][head]], ...}``.
    """

    model.eval()
    attn = _attentions(model, text_rows)  # layer batch head q k
    diag = torch.diagonal(attn, offset=-1, dim1=-2, dim2=-1)  # layer batch head q-1
    prev = diag.mean(dim=(1, 3))

    gen = torch.Generator().manual_seed(10_000 + seed)
    ind_per_p = []
    first_loss, second_loss = [], []
    for p in periods:
        block = token_pool[torch.randint(len(token_pool), (n_random, p), generator=gen)]
        toks = torch.cat([torch.zeros(n_random, 1, dtype=torch.long), block, block], dim=1)
        with torch.no_grad():
            out = model(toks, output_attentions=True)
        a = torch.stack(list(out.attentions))  # layer batch head q k
        q = torch.arange(p + 1, 2 * p + 1)  # second-block positions
        k = q - p + 1
        ind_per_p.append(a[:, :, :, q, k].mean(dim=(1, 3)))
        logp = out.logits.log_softmax(-1)
        tgt_lp = logp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]  # batch pos-1
        first_loss.append(float(-tgt_lp[:, 1:p].mean()))  # predicting block tokens 2..P
        second_loss.append(float(-tgt_lp[:, p + 1 :].mean()))  # predicting second-copy tokens 2..P
    ind = torch.stack(ind_per_p).mean(0)
    return {
        "prev_token": [[round(float(x), 4) for x in row] for row in prev],
        "induction": [[round(float(x), 4) for x in row] for row in ind],
        "induction_periods": list(periods),
        "random_first_copy_loss": round(sum(first_loss) / len(first_loss), 4),
        "random_second_copy_loss": round(sum(second_loss) / len(second_loss), 4),
    }


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def copy_rows(
    n_rows: int,
    n_ctx: int,
    token_pool: Int[Tensor, " pool"],
    lengths: tuple[int, int],
    other_weight: float,
    gen: torch.Generator,
) -> tuple[Int[Tensor, "row pos"], Float[Tensor, "row pos"]]:
    """Rows of ``<|endoftext|>`` followed by packed pairs (R, R) of random blocks, each of a length
    P drawn from ``lengths`` (inclusive; varied, so a fixed-offset head cannot solve it), cut at
    ``n_ctx``. ``weights[r, t]`` weighs the loss of predicting token t: 1 where induction can
    predict it (second-copy tokens 2..P), ``other_weight`` elsewhere, 0 at position 0.

    >>> rows, w = copy_rows(2, 16, torch.arange(1, 50), (3, 3), 0.0, torch.Generator().manual_seed(0))
    >>> bool((rows[:, 1:4] == rows[:, 4:7]).all()), w[0, :8].tolist()
    (True, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    """
    lo, hi = lengths
    rows = torch.zeros((n_rows, n_ctx), dtype=torch.long)
    weights = torch.full((n_rows, n_ctx), float(other_weight))
    weights[:, 0] = 0.0
    for r in range(n_rows):
        t = 1
        while t < n_ctx:
            p = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            block = token_pool[torch.randint(len(token_pool), (p,), generator=gen)]
            pair = torch.cat([block, block])[: n_ctx - t]
            rows[r, t : t + len(pair)] = pair
            second = slice(min(t + p + 1, n_ctx), min(t + 2 * p, n_ctx))
            weights[r, second] = 1.0
            t += 2 * p
    return rows, weights


def _set_determinism(seed: int) -> None:
    import random

    import numpy as np

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _eval_loss(model: Any, rows: Int[Tensor, "row pos"], batch: int = 64) -> float:

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x = rows[i : i + batch]
            logits = model(x).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            tot += float(loss)
            n += x[:, 1:].numel()
    model.train()
    return tot / n


def train_default(cfg: TrainConfig, out_dir: str | Path, *, log=print) -> dict[str, Any]:
    """Train one default model; write weights, config, tokenizer, ``card.json`` to ``out_dir``.

    Switches torch to one thread and deterministic algorithms while it runs, then restores both.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, out_dir, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: TrainConfig, out_dir: str | Path, log) -> dict[str, Any]:  # noqa: C901
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    t_start = time.time()
    _set_determinism(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_texts, held_texts = corpus_split(cfg.n_train_docs, cfg.n_heldout_docs, cfg.corpus_seed)
    tok = build_tokenizer(train_texts, cfg.vocab_size)
    vocab_size = len(tok)
    train_rows = pack_documents(_encode(tok, train_texts), cfg.n_ctx)
    held_rows = pack_documents(_encode(tok, held_texts), cfg.n_ctx)
    log(
        f"corpus: {len(train_texts)} docs -> {tuple(train_rows.shape)} rows "
        f"({train_rows.numel():,} tokens); held-out {tuple(held_rows.shape)}; vocab {vocab_size} "
        f"({time.time() - t_start:.1f}s)"
    )
    uni = unigram_loss(train_rows, held_rows, vocab_size)

    torch.manual_seed(cfg.seed)
    hf_cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_ctx,
        n_ctx=cfg.n_ctx,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    model = GPT2LMHeadModel(hf_cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    counts = torch.bincount(train_rows.reshape(-1), minlength=vocab_size)
    pool = torch.nonzero(counts >= 20)[:, 0]
    pool = pool[pool != 0]  # frequent tokens, never <|endoftext|>: for copy rows and head scores
    n_copy = round(cfg.copy_fraction * cfg.batch_size)
    n_text = cfg.batch_size - n_copy
    copy_gen = torch.Generator().manual_seed(20_000 + cfg.seed)

    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_rows), generator=gen)
    cursor = 0
    epochs = 0
    history: list[dict[str, float]] = []
    t_train = time.time()
    run_loss, run_copy, run_n = 0.0, 0.0, 0
    for step in range(cfg.steps):
        if cursor + n_text > len(order):
            order = torch.randperm(len(train_rows), generator=gen)
            cursor = 0
            epochs += 1
        text = train_rows[order[cursor : cursor + n_text]]
        cursor += n_text
        crows, cw = copy_rows(n_copy, cfg.n_ctx, pool, cfg.copy_lengths, cfg.copy_other_weight, copy_gen)
        x = torch.cat([text, crows])
        w = torch.cat([torch.ones_like(text, dtype=torch.float), cw])[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
        ).view_as(w)
        loss = (nll * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            run_loss += float(nll[:n_text].mean())
            copy_w = (w[n_text:] == 1.0).float()
            run_copy += float((nll[n_text:] * copy_w).sum() / copy_w.sum().clamp(min=1))
        run_n += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rec = {
                "step": step + 1,
                "train_loss": round(run_loss / run_n, 4),
                "copy_loss": round(run_copy / run_n, 4),
                "seconds": round(time.time() - t_train, 1),
            }
            history.append(rec)
            log(
                f"step {step + 1:5d}  text loss {rec['train_loss']:.4f}  copy loss "
                f"{rec['copy_loss']:.4f}  lr {lr_at(step):.2e}  {rec['seconds']:.0f}s"
            )
            run_loss, run_copy, run_n = 0.0, 0.0, 0
    train_seconds = time.time() - t_train

    model.eval()
    model.set_attn_implementation("eager")
    held_loss = _eval_loss(model, held_rows)
    train_eval = _eval_loss(model, train_rows[: len(held_rows)])
    scores = head_scores(
        model, held_rows[:64], token_pool=pool, periods=cfg.induction_periods, seed=cfg.seed
    )
    prev_heads = [
        f"{li}.{hi}"
        for li, row in enumerate(scores["prev_token"])
        for hi, v in enumerate(row)
        if v >= cfg.prev_threshold
    ]
    ind_heads = [
        f"{li}.{hi}"
        for li, row in enumerate(scores["induction"])
        for hi, v in enumerate(row)
        if v >= cfg.induction_threshold
    ]

    # -- save ---------------------------------------------------------------------------------
    model.config.architectures = ["GPT2LMHeadModel"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _normalise_tokenizer_config(out)
    her_ids = tok.backend_tokenizer.encode(" her", add_special_tokens=False).ids
    card = {
        "name": f"default-s{cfg.seed}" if cfg.seed else "default",
        "seed": cfg.seed,
        "corpus_seed": cfg.corpus_seed,
        "architecture": "GPT2LMHeadModel",
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_ctx": cfg.n_ctx,
        "vocab_size": vocab_size,
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "epochs_completed": epochs,
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.n_ctx,
        "corpus_train_docs": cfg.n_train_docs,
        "corpus_train_tokens": int(train_rows.numel()),
        "corpus_heldout_tokens": int(held_rows.numel()),
        "train_loss_final": history[-1]["train_loss"],
        "train_loss_eval": round(train_eval, 4),
        "heldout_loss": round(held_loss, 4),
        "unigram_loss": round(uni, 4),
        "her_token_ids": her_ids,
        "head_scores": scores,
        "prev_token_threshold": cfg.prev_threshold,
        "induction_threshold": cfg.induction_threshold,
        "prev_token_heads": prev_heads,
        "induction_heads": ind_heads,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "torch_threads": torch.get_num_threads(),
        "history": history,
        "config": asdict(cfg),
        "versions": _versions(),
    }
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    log(
        f"held-out loss {held_loss:.4f} vs unigram {uni:.4f}; prev-token heads {prev_heads}; "
        f"induction heads {ind_heads}; {card['total_seconds']:.0f}s"
    )
    return card


def _normalise_tokenizer_config(out: Path) -> None:
    """Make tokenizer_config.json loadable by transformers 4.x and 5.x alike."""
    path = out / "tokenizer_config.json"
    conf = json.loads(path.read_text())
    conf["tokenizer_class"] = "PreTrainedTokenizerFast"
    conf["add_bos_token"] = True
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        conf[key] = EOT
    conf["model_max_length"] = 1_000_000
    path.write_text(json.dumps(conf, indent=1, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "?"
    return out


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def _curriculum_lines(card: dict[str, Any]) -> list[str]:
    cfg = card.get("config", {})
    frac = cfg.get("copy_fraction", 0.0)
    if not frac:
        return []
    lo, hi = cfg["copy_lengths"]
    return [
        f"A share of {frac:g} of every training batch is a copy curriculum (methods.md 6.7): rows",
        f"of packed pairs (R, R) of random blocks of frequent tokens, block length P in [{lo}, {hi}],",
        "the loss weighted 1 on the tokens an induction head can predict (second-copy tokens 2..P)",
        f"and {cfg['copy_other_weight']:g} on the rest of those rows. The other rows are grammar text.",
    ]


def write_model_card(model_dirs: Sequence[str | Path], path: str | Path) -> str:
    """Write MODEL_CARD.md from the ``card.json`` files in ``model_dirs``; returns the text."""
    cards = [json.loads((Path(d) / "card.json").read_text()) for d in model_dirs]
    lines = [
        "# The default models (`default`, `default-s1`)",
        "",
        "<!-- Generated by scripts/train_default.py from card.json; do not edit by hand. -->",
        "",
        "Two GPT-2-style decoders trained from scratch on CPU on text from the project's own",
        "seeded English grammar (`tlprobes.models.training.corpus`), with a byte-level BPE tokenizer",
        "trained on the same text. They differ only in the model seed (initialisation and batch",
        "order); the corpus and the tokenizer are shared, so their embedding spaces can be",
        "compared token by token.",
        *_curriculum_lines(cards[0]),
        'Load with `tlprobes.load_model("default")` or `load_model("default-s1")`.',
        "",
        "| | " + " | ".join(f"`{c['name']}`" for c in cards) + " |",
        "|---|" + "---|" * len(cards),
    ]

    def row(label: str, fn) -> None:  # type: ignore[no-untyped-def]
        lines.append(f"| {label} | " + " | ".join(str(fn(c)) for c in cards) + " |")

    row("seed (model / corpus)", lambda c: f"{c['seed']} / {c['corpus_seed']}")
    row(
        "layers × d_model × heads, n_ctx",
        lambda c: f"{c['n_layer']} × {c['n_embd']} × {c['n_head']}, {c['n_ctx']}",
    )
    row("vocabulary (BPE)", lambda c: c["vocab_size"])
    row("parameters", lambda c: f"{c['n_params']:,}")
    row("steps × batch × n_ctx", lambda c: f"{c['steps']} × {c['batch_size']} × {c['n_ctx']}")
    row(
        "tokens seen (text + copy rows) / corpus tokens",
        lambda c: f"{c['train_tokens_seen']:,} / {c['corpus_train_tokens']:,}",
    )
    row("train loss, text (last log window)", lambda c: f"{c['train_loss_final']:.3f}")
    row(
        "train loss, inducible copy tokens (last log window)",
        lambda c: f"{c['history'][-1].get('copy_loss', float('nan')):.3f}",
    )
    row("train loss (eval)", lambda c: f"{c['train_loss_eval']:.3f}")
    row("**held-out loss**", lambda c: f"**{c['heldout_loss']:.3f}**")
    row("unigram baseline (held-out)", lambda c: f"{c['unigram_loss']:.3f}")
    row(
        "random tokens: loss on 1st / 2nd copy",
        lambda c: (
            f"{c['head_scores']['random_first_copy_loss']:.2f} / "
            f"{c['head_scores']['random_second_copy_loss']:.2f}"
        ),
    )
    row(
        f"previous-token heads (score ≥ {cards[0]['prev_token_threshold']})",
        lambda c: ", ".join(c["prev_token_heads"]) or "none",
    )
    row(
        f"induction heads (score ≥ {cards[0]['induction_threshold']})",
        lambda c: ", ".join(c["induction_heads"]) or "none",
    )
    row("training time (1 CPU thread)", lambda c: f"{c['train_seconds'] / 60:.1f} min")
    lines += [
        "",
        "Losses are in nats per token. Head names are `layer.head`. The previous-token score is",
        "the mean of `A[t, t-1]` over held-out text; the induction score is the mean of",
        "`A[t, t-P+1]` over the second copy of a random token block of length P",
        f"(averaged over P in {cards[0]['head_scores']['induction_periods']}).",
        "",
    ]
    # (score key, label, what follows the best score): one paragraph per kind no head reaches
    missing = [
        ("induction", "induction", [
            ": at this",
            "training budget the models have not (yet) formed induction heads, and copying a",
            "random block barely lowers the loss on its second copy. Do not use these models as",
            "examples of induction circuits.",
        ]),
        ("prev_token", "previous-token", ["."]),
    ]
    if any(c["induction_heads"] for c in cards):
        per_model = "; ".join(
            f"`{c['name']}`: {', '.join(c['induction_heads']) or 'none'} (best "
            f"{max(max(r) for r in c['head_scores']['induction']):.2f})"
            for c in cards
        )
        lines += [
            f"**Induction heads**: {per_model}. The loss on the second copy of a random block falls",
            "well below the loss on the first (table above). The heads come from the copy",
            "curriculum, not from the grammar text.",
            "",
        ]
    for kind, label, tail in missing:
        if not any(c[f"{kind}_heads"] for c in cards):
            best = max(max(max(r) for r in c["head_scores"][kind]) for c in cards)
            head = f"**No head reaches the {label} threshold** (best score {best:.2f})"
            lines += [head + tail[0], *tail[1:], ""]
    for c in cards:
        lines += [
            f"## `{c['name']}`: per-head scores",
            "",
            "| layer | previous-token (head 0..) | induction (head 0..) |",
            "|---|---|---|",
        ]
        for li, (pv, iv) in enumerate(
            zip(c["head_scores"]["prev_token"], c["head_scores"]["induction"], strict=True)
        ):
            lines.append(
                f"| {li} | "
                + " ".join(f"{v:.2f}" for v in pv)
                + " | "
                + " ".join(f"{v:.2f}" for v in iv)
                + " |"
            )
        lines.append("")
    text = "\n".join(lines)
    Path(path).write_text(text)
    return text
