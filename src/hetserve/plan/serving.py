"""What a replica group runs: the engine's image, version and command line, from the plan's knobs.

A plan file carries, per replica group, the engine version and the whole command its replicas
start with, so that every deploy target (Kubernetes, SkyPilot, Ray Serve) renders the same
engine the planner modelled: tensor and pipeline parallelism, batch limits (`max_num_seqs`,
`max_num_batched_tokens`: the chunked-prefill budget), memory share, context length and
quantisation. Flags as documented by each engine's OpenAI server at the version recorded:
vLLM `vllm serve`, SGLang `sglang.launch_server`, TensorRT-LLM `trtllm-serve`.
"""

from __future__ import annotations

PORT = 8000  # every engine serves its OpenAI API here, in its container or on its node

# engine -> (version the flags below are written for, container image with {version})
ENGINES: dict[str, tuple[str, str]] = {
    "vllm": ("0.11.0", "vllm/vllm-openai:v{version}"),
    "vllm-v0": ("0.5.5", "vllm/vllm-openai:v{version}"),
    "sglang": ("0.5.3", "lmsysorg/sglang:v{version}"),
    "trt-llm": ("1.0.0", "nvcr.io/nvidia/tensorrt-llm/release:{version}"),
}
# weight dtype -> the engines' --quantization (bf16/fp16 checkpoints serve as they are; fp8 is
# quantised on load; int4 needs an AWQ checkpoint, which the model's hf_id must then name)
QUANTIZATION = {"bf16": None, "fp16": None, "fp8": "fp8", "int4": "awq"}
# bf16 as "auto": the checkpoint's dtype, which vLLM turns to float16 on devices without bf16
# (T4, V100: compute capability below 8.0), where an explicit bfloat16 refuses to start
DTYPE_FLAG = {"bf16": "auto", "fp16": "float16"}


# the same on AMD Instinct (ROCm) devices, where the engine publishes ROCm builds
ROCM_ENGINES: dict[str, tuple[str, str]] = {
    "vllm": ("0.11.2", "rocm/vllm:rocm7.0.0_vllm_{version}_20251210"),
    "sglang": ("0.5.3", "lmsysorg/sglang:v{version}-rocm630"),
}


def engine_version(engine: str, rocm: bool = False) -> str:
    return (ROCM_ENGINES if rocm and engine in ROCM_ENGINES else ENGINES)[engine][0]


def engine_image(engine: str, version: str, rocm: bool = False) -> str:
    table = ROCM_ENGINES if rocm and engine in ROCM_ENGINES else ENGINES
    return table[engine][1].format(version=version)


def context_length(classes, max_context: int) -> int:
    """The longest request a model's classes hold (prompt + output, upper edges exclusive),
    within the model's context: the engines' max_model_len."""
    longest = max(c.input_range[1] - 1 + c.output_range[1] - 1 for c in classes)
    return min(longest, max_context)


def served_names(name: str, hf_id: str = "") -> list[str]:
    """The names a model's engines serve: the plan's name first, then its Hugging Face id (when
    it has one and it differs)."""
    return list(dict.fromkeys((name, *([hf_id] if hf_id else []))))


def engine_command(engine: str, *, hf_id: str, names: list[str], tp: int, pp: int,
                   max_num_seqs: int, max_num_batched_tokens: int,
                   gpu_memory_utilization: float, max_model_len: int, dtype: str,
                   kv_dtype: str, port: int = PORT) -> list[str]:
    """The argv a replica starts with (host 0.0.0.0, `port`): the model by its Hugging Face id,
    served under `names` (the plan's name first) so requests naming any of them are answered."""
    quant = QUANTIZATION[dtype]
    if engine in ("vllm", "vllm-v0"):
        cmd = ["vllm", "serve", hf_id, "--served-model-name", *names,
               "--host", "0.0.0.0", "--port", str(port),
               "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
               "--max-num-seqs", str(max_num_seqs),
               "--max-num-batched-tokens", str(max_num_batched_tokens),
               "--enable-chunked-prefill",
               "--gpu-memory-utilization", f"{gpu_memory_utilization:g}",
               "--max-model-len", str(max_model_len)]
        cmd += ["--dtype", DTYPE_FLAG.get(dtype, "auto")]
        if quant:
            cmd += ["--quantization", quant]
        if kv_dtype == "fp8":
            cmd += ["--kv-cache-dtype", "fp8"]
        return cmd
    if engine == "sglang":
        cmd = ["python3", "-m", "sglang.launch_server", "--model-path", hf_id,
               "--served-model-name", *engine_names(engine, names), "--host", "0.0.0.0",
               "--port", str(port),
               "--tp-size", str(tp), "--pp-size", str(pp),
               "--max-running-requests", str(max_num_seqs),
               "--chunked-prefill-size", str(max_num_batched_tokens),
               "--mem-fraction-static", f"{gpu_memory_utilization:g}",
               "--context-length", str(max_model_len)]
        if quant:
            cmd += ["--quantization", quant]
        if kv_dtype == "fp8":
            cmd += ["--kv-cache-dtype", "fp8_e4m3"]
        return cmd
    if engine == "trt-llm":
        return ["trtllm-serve", hf_id, "--host", "0.0.0.0", "--port", str(port),
                "--tp_size", str(tp), "--pp_size", str(pp),
                "--max_batch_size", str(max_num_seqs),
                "--max_num_tokens", str(max_num_batched_tokens),
                "--kv_cache_free_gpu_memory_fraction", f"{gpu_memory_utilization:g}",
                "--max_seq_len", str(max_model_len)]
    raise ValueError(f"engine {engine!r}: no command known")


def engine_names(engine: str, names: list[str]) -> list[str]:
    """Of a model's served names (the plan's name, then its Hugging Face id), those the engine's
    server answers to with engine_command: vLLM every one (--served-model-name takes several),
    SGLang the first (its flag takes one), TensorRT-LLM the model it loads (the Hugging Face
    id)."""
    if engine == "sglang":
        return names[:1]
    if engine == "trt-llm":
        return names[-1:]
    return list(names)


def flag(command: list[str], name: str) -> str | None:
    """The value after `name` in `command` (None when absent)."""
    try:
        return command[command.index(name) + 1]
    except (ValueError, IndexError):
        return None
