import json

import pytest

from hetserve.errors import HetserveError
from hetserve.models import get_model
from hetserve.perf import Deployment


def test_kv_bytes_per_token():
    assert get_model("llama-3.1-8b").kv_bytes_per_token() == 131072  # 2*32*8*128*2
    assert get_model("llama-3.1-70b").kv_bytes_per_token() == 327680  # 2*80*8*128*2
    assert get_model("llama-2-7b").kv_bytes_per_token() == 524288  # no GQA
    assert get_model("llama-3.1-8b").kv_bytes_per_token("fp8") == 65536


@pytest.mark.parametrize("name,billions", [
    ("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55), ("llama-2-7b", 6.74),
    ("llama-2-70b", 68.98), ("mistral-7b", 7.25), ("qwen2.5-7b", 7.62), ("qwen2.5-72b", 72.71),
])
def test_parameter_counts_match_published_sizes(name, billions):
    assert get_model(name).params / 1e9 == pytest.approx(billions, abs=0.01)


def test_aliases_resolve():
    assert get_model("Meta-Llama-3-8B-Instruct").name == "llama-3.1-8b"
    assert get_model("meta-llama/Llama-3.3-70B-Instruct").name == "llama-3.1-70b"


def test_70b_bf16_needs_two_80gb_gpus(catalog):
    m = get_model("llama-3.1-70b")
    a100 = catalog.get("A100-80GB")
    assert m.weight_bytes() == pytest.approx(141.1e9, rel=1e-3)
    one = Deployment(m, a100, tp=1)
    assert not one.fits and "weights need 141.1 GB" in one.why_not()
    assert Deployment(m, a100, tp=2).fits
    assert Deployment(m, a100, tp=1, dtype="fp8").fits  # 70.6 GB of fp8 weights
    assert Deployment(m, a100, tp=1, pp=2).fits


def test_hf_config_loads(tmp_path):
    cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
           "torch_dtype": "bfloat16", "max_position_embeddings": 8192}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    spec = get_model(str(path))
    assert spec.params == get_model("llama-3.1-8b").params
    assert spec.head_dim == 128 and spec.max_context == 8192
    del cfg["vocab_size"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(HetserveError, match="missing field 'vocab_size'"):
        get_model(str(path))


def test_unknown_model_suggests():
    with pytest.raises(HetserveError, match="did you mean llama-3.1-8b"):
        get_model("lama-3.1-8b")
