"""A model spread over devices (accelerate ``device_map`` with CPU and disk offload) captures exactly
what the same model on one device captures, probe by probe (issue #15)."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_BRIDGE, PROMPTS
from tensor_helpers import tensors

import tlprobes as tp
from tlprobes._tl.adapter import adapter_for, execution_device


def _disk_offload() -> bool:
    """TL 4's bridge boots with an accelerate device_map and an offload folder; TL 3.9's has no
    ``offload_folder`` (and rejects disk targets), TL 2 has no bridge."""
    if not HAS_BRIDGE:
        return False
    import inspect

    from transformer_lens.model_bridge import TransformerBridge

    return "offload_folder" in inspect.signature(TransformerBridge.boot_transformers).parameters


pytestmark = pytest.mark.skipif(not _disk_offload(), reason="CPU/disk device maps need TL 4's bridge "
                                "(boot_transformers(device_map=, offload_folder=))")
pytest.importorskip("accelerate")

#: the tiny GPT-2's modules (wte and lm_head share one tensor: accelerate needs them together)
MAPS = {
    # blocks 1 and 2 offloaded to disk, the rest in CPU memory
    "blocks_on_disk": {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                       "transformer.h.1": "disk", "transformer.h.2": "disk",
                       "transformer.ln_f": "cpu", "lm_head": "cpu"},
    # the embedding, the final norm and the unembedding on disk: the model's first parameter is a
    # meta tensor, so its input device comes from accelerate's hook, not from a parameter
    "ends_on_disk": {"transformer.wte": "disk", "transformer.wpe": "disk", "transformer.h.0": "cpu",
                     "transformer.h.1": "disk", "transformer.h.2": "cpu",
                     "transformer.ln_f": "disk", "lm_head": "disk"},
}


def _probes():
    return [tp.Residual(), tp.Attention(), tp.Components(), tp.LogitLens(top_k=3), tp.Steps(),
            tp.HeadSteps(), tp.ResidualMean()]


@pytest.fixture(scope="module")
def single(tiny_dir):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(tiny_dir[0]), device="cpu")


@pytest.fixture(scope="module", params=sorted(MAPS))
def spread(request, tiny_dir, tmp_path_factory):
    from transformer_lens.model_bridge import TransformerBridge

    offload = tmp_path_factory.mktemp(f"offload_{request.param}")
    model = TransformerBridge.boot_transformers(str(tiny_dir[0]), device_map=MAPS[request.param],
                                                offload_folder=str(offload))
    return request.param, model


def test_the_model_really_is_spread(spread):
    name, model = spread
    hf_map = model.original_model.hf_device_map
    assert hf_map == MAPS[name] and "disk" in hf_map.values()
    devices = {p.device.type for p in model.parameters()}
    assert devices == {"cpu", "meta"}  # offloaded weights are meta placeholders until a call
    assert adapter_for(model).meta.device == "cpu"  # where inputs go: accelerate's execution device


def test_captures_equal_the_single_device_model(single, spread):
    name, model = spread
    want = tp.run(single, PROMPTS, *_probes(), batch_size=2)
    got = tp.run(model, PROMPTS, *_probes(), batch_size=2, device="cpu")
    assert list(got) == list(want)
    compared = 0
    for probe in want:
        a, b = tensors(want[probe], probe), tensors(got[probe], probe)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key].device == torch.device("cpu"), key  # captures land on the capture device
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key].nan_to_num(7.0), b[key].nan_to_num(7.0)), (name, key)
            compared += 1
    assert compared > 40


def test_a_sharded_run_of_a_spread_model_equals_the_single_device_run(single, spread, tmp_path):
    """Shards commit and merge for a model with disk-offloaded weights (the fingerprint hashes
    those by name, dtype and shape: their bytes are not in memory)."""
    name, model = spread
    want = tp.run(single, PROMPTS, tp.Residual(), tp.Steps(), batch_size=2)
    got = tp.run(model, PROMPTS, tp.Residual(), tp.Steps(), batch_size=2, device="cpu",
                 shard_size=2, out=tmp_path / "shards")
    assert len(list((tmp_path / "shards").glob("shard-*"))) == -(-len(PROMPTS) // 2)
    for probe in want:
        a, b = tensors(want[probe], probe), tensors(got[probe], probe)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key].nan_to_num(7.0), b[key].nan_to_num(7.0)), (name, key)


def test_readout_weights_of_an_offloaded_unembedding(single, spread):
    """W_U / b_U of an offloaded lm_head are loaded for the read (not meta placeholders), and the
    lens on arrays reads through the spread model as through the single one."""
    _, model = spread
    a, b = adapter_for(single), adapter_for(model)
    assert b.unembed_weight.device.type == "cpu" and torch.equal(a.unembed_weight, b.unembed_weight)
    assert torch.equal(a.unembed_bias, b.unembed_bias)
    x = torch.randn(2, 5, a.d_model)
    assert torch.allclose(a.final_norm(x), b.final_norm(x), atol=0, rtol=0)


def test_execution_device_of_plain_and_offloaded_modules(spread):
    _, model = spread
    assert execution_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert execution_device(torch.nn.ReLU()) is None
    for block in model.blocks:
        assert execution_device(block) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="TL's n_devices needs two CUDA devices")
def test_n_devices_over_two_gpus(single, tiny_dir):  # pragma: no cover - GPU machines only
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(str(tiny_dir[0]), n_devices=2)
    want = tp.run(single, PROMPTS, *_probes(), batch_size=2)
    got = tp.run(model, PROMPTS, *_probes(), batch_size=2, device="cpu")
    for probe in want:
        a, b = tensors(want[probe], probe), tensors(got[probe], probe)
        for key in a:
            assert b[key].device == torch.device("cpu")
            assert torch.allclose(a[key].nan_to_num(7.0), b[key].nan_to_num(7.0), atol=1e-4), key
