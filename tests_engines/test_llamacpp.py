"""A real engine on this CPU: llama.cpp's server (through llama-cpp-python) serving a small
Llama-architecture model with random weights that this test writes as GGUF (random weights
time the same as trained ones; nothing is downloaded). `hetserve profile` measures it and fits
its coefficients: the first measured CPU serving tier.

Not part of `make test` (llama-cpp-python compiles llama.cpp, minutes on 2 cores): run with
`make test-engines`. Skipped where llama-cpp-python or gguf is not installed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp.server")

# a ~27M-parameter Llama: big enough that steps take milliseconds on a CPU
DIMS = {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 4, "ff": 1536, "vocab": 1024}
SERVED = "tiny-llama"


def write_gguf(path: Path, seed: int = 0) -> None:
    d = DIMS
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(d["hidden"])
    w.add_block_count(d["layers"])
    w.add_feed_forward_length(d["ff"])
    w.add_head_count(d["heads"])
    w.add_head_count_kv(d["kv_heads"])
    w.add_rope_dimension_count(d["hidden"] // d["heads"])
    w.add_layer_norm_rms_eps(1e-5)
    # a SentencePiece-style vocabulary: specials, the 256 byte tokens, then filler pieces
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{k}" for k in range(d["vocab"] - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (d["vocab"] - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    h, kv = d["hidden"], d["hidden"] // d["heads"] * d["kv_heads"]

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(d["vocab"], h))
    w.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    w.add_tensor("output.weight", mat(d["vocab"], h))
    for i in range(d["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(h, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(h, h))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(kv, h))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(kv, h))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(h, h))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(h, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(d["ff"], h))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(d["ff"], h))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(h, d["ff"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_config(path: Path) -> None:
    """The same architecture as a Hugging Face config.json, for hetserve's model registry."""
    d = DIMS
    path.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "name": SERVED,
        "hidden_size": d["hidden"], "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"], "num_key_value_heads": d["kv_heads"],
        "intermediate_size": d["ff"], "vocab_size": d["vocab"],
        "max_position_embeddings": 4096, "torch_dtype": "float16",
        "tie_word_embeddings": False}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_profile_llama_cpp_server_on_this_cpu(tmp_path):
    model, config = tmp_path / "tiny.gguf", tmp_path / SERVED / "config.json"
    config.parent.mkdir()
    write_gguf(model)
    write_config(config)
    # this machine as a catalog row (2 cores); the fit corrects its efficiencies
    catalog = tmp_path / "cpu.yaml"
    catalog.write_text(yaml.safe_dump({"accelerators": [{
        "name": "ci-cpu", "kind": "cpu", "memory_gb": 16, "memory_bw_gbs": 60,
        "bf16_tflops": 1.0, "link": "none", "link_gbs": 0, "allreduce_us": 0,
        "max_per_node": 1, "usd_per_hour": 0.1, "eta_compute": 0.5, "eta_memory": 0.5,
        "step_overhead_ms": 1.0, "notes": "the test machine"}]}))
    port = free_port()
    log = (tmp_path / "server.log").open("w")  # llama.cpp logs much: a pipe would fill
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--model_alias", SERVED],
        stdout=log, stderr=subprocess.STDOUT)
    out = tmp_path / "profile.json"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        cli = str(Path(sys.executable).with_name("hetserve"))
        # llama-cpp-python's server serves one request at a time (and by default a new
        # request interrupts a running stream): one client, max_num_seqs 1
        res = subprocess.run(
            [cli, "profile", "--endpoint", f"http://127.0.0.1:{port}", "-m", str(config),
             "-a", "ci-cpu", "--catalog", str(catalog), "--dtype", "fp16",
             "--max-num-seqs", "1", "--sizes", "32:32,128:32,512:32,2048:32",
             "--concurrency", "1", "--seconds-per-point", "3", "--timeout", "60",
             "--out", str(out)], capture_output=True, text=True, timeout=600)
        print(res.stdout)
        assert res.returncode == 0, res.stderr
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
    prof = json.loads(out.read_text())
    assert prof["complete"] and len(prof["points"]) == 4
    assert prof["prompts"].startswith("text")  # it takes no token ids: sized words
    assert prof["fit"] is not None and prof["fit_report"]["after"] < prof["fit_report"]["before"]
    # llama.cpp on 2 cores shared with the client varies run to run: 7-20% fitted median error
    assert prof["fit_report"]["after"] < 0.25
