"""Model architectures: the shapes the performance model needs, bundled or read from config.json."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from hetserve.errors import (
    HetserveError,
    Record,
    load_json,
    load_yaml,
    suggest,
    validation_message,
)

__all__ = ["DTYPE_BYTES", "Dtype", "ModelSpec", "bundled_models", "check_dtype", "get_model"]

Dtype = Literal["bf16", "fp16", "fp8", "int4"]
# bytes per weight; int4 carries group scales (group 128, fp16 scale + zero: ~3%)
DTYPE_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5 * 1.03}


# Far beyond any real dense model (the largest have ~130 layers, 16k hidden, 256k vocabulary):
# bounds that keep a typo from turning into a 10^30-byte model.
LIMITS = {"layers": 1024, "hidden": 131072, "heads": 4096, "head_dim": 4096,
          "intermediate": 1 << 20, "vocab": 1 << 24, "max_context": 1 << 24}


def check_dtype(dtype: str | None, option: str = "--dtype") -> str | None:
    """The dtype if it is one of DTYPE_BYTES (or None: the model's default), else an error."""
    if dtype is not None and dtype not in DTYPE_BYTES:
        raise HetserveError(f"{option} {dtype!r}: expected one of {', '.join(DTYPE_BYTES)}")
    return dtype


class ModelSpec(Record):
    """A dense decoder-only transformer (Llama-style: gated MLP, GQA, RMSNorm)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    hf_id: str = ""
    aliases: tuple[str, ...] = ()
    layers: int = Field(gt=0, le=LIMITS["layers"])
    hidden: int = Field(gt=0, le=LIMITS["hidden"])
    heads: int = Field(gt=0, le=LIMITS["heads"])
    kv_heads: int = Field(gt=0, le=LIMITS["heads"])
    head_dim: int = Field(gt=0, le=LIMITS["head_dim"])
    intermediate: int = Field(gt=0, le=LIMITS["intermediate"])
    vocab: int = Field(gt=0, le=LIMITS["vocab"])
    max_context: int = Field(default=32768, gt=0, le=LIMITS["max_context"])
    tie_embeddings: bool = False
    qkv_bias: bool = False
    default_dtype: Dtype = "bf16"

    @model_validator(mode="after")
    def _gqa(self) -> ModelSpec:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads")
        return self

    # ---- shapes -------------------------------------------------------------------------
    @property
    def layer_params(self) -> int:
        """Matmul parameters of one transformer layer (attention projections + gated MLP)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return attn + bias + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters: layers, input embedding, LM head (unless tied), final norm."""
        head = 0 if self.tie_embeddings else self.embedding_params
        return self.layers * self.layer_params + self.embedding_params + head + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters touched by matmuls per token (the embedding lookup is a gather)."""
        return self.layers * self.layer_params + self.embedding_params

    def weight_bytes(self, dtype: str | None = None) -> float:
        return self.params * DTYPE_BYTES[dtype or self.default_dtype]

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """K and V of every layer for one token: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[kv_dtype]

    def matches(self, name: str) -> bool:
        key = _normalise(name)
        return key in {_normalise(n) for n in (self.name, self.hf_id, *self.aliases) if n}


def _normalise(name: str) -> str:
    """Model names compare case-insensitively, without org prefix or -instruct/-hf/-chat."""
    key = name.strip().lower().rsplit("/", 1)[-1]
    return re.sub(r"-(instruct|chat|hf)$", "", key)


@cache
def bundled_models() -> tuple[ModelSpec, ...]:
    path = Path(str(resources.files("hetserve.models") / "data" / "models.yaml"))
    rows = load_yaml(path)["models"]
    return tuple(ModelSpec(**row) for row in rows)


class HFConfig(Record):
    """The fields of a Hugging Face config.json that hetserve reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    num_hidden_layers: int = Field(gt=0, le=LIMITS["layers"], strict=True)
    hidden_size: int = Field(gt=0, le=LIMITS["hidden"], strict=True)
    num_attention_heads: int = Field(gt=0, le=LIMITS["heads"], strict=True)
    num_key_value_heads: int | None = Field(default=None, gt=0, le=LIMITS["heads"], strict=True)
    head_dim: int | None = Field(default=None, gt=0, le=LIMITS["head_dim"], strict=True)
    intermediate_size: int = Field(gt=0, le=LIMITS["intermediate"], strict=True)
    vocab_size: int = Field(gt=0, le=LIMITS["vocab"], strict=True)
    max_position_embeddings: int | None = Field(default=None, gt=0, le=LIMITS["max_context"],
                                                strict=True)
    tie_word_embeddings: bool = Field(default=False, strict=True)
    attention_bias: bool | None = Field(default=None, strict=True)
    model_type: str = ""
    torch_dtype: str | None = None
    name_or_path: str = Field(default="", alias="_name_or_path")
    num_local_experts: int | None = None
    num_experts: int | None = None


def from_hf_config(path: Path | str) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (dense Llama/Mistral/Qwen2-style models)."""
    path = Path(path)
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise HetserveError(f"{path}: expected a JSON object")
    try:
        cfg = HFConfig.model_validate(raw)
    except ValidationError as err:
        raise HetserveError(validation_message(err, str(path))) from None
    if cfg.num_local_experts or cfg.num_experts:
        raise HetserveError(f"{path}: mixture-of-experts models are not supported yet")
    if cfg.hidden_size % cfg.num_attention_heads and cfg.head_dim is None:
        raise HetserveError(f"{path}: hidden_size {cfg.hidden_size} is not a multiple of "
                            f"num_attention_heads {cfg.num_attention_heads}; give head_dim")
    row = {
        "name": cfg.name_or_path or path.parent.name or path.stem,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads,
        "intermediate": cfg.intermediate_size,
        "vocab": cfg.vocab_size,
        "tie_embeddings": cfg.tie_word_embeddings,
        "qkv_bias": cfg.attention_bias if cfg.attention_bias is not None
        else cfg.model_type == "qwen2",
        "default_dtype": {"bfloat16": "bf16", "float16": "fp16"}.get(str(cfg.torch_dtype),
                                                                    "bf16"),
    }
    if cfg.max_position_embeddings:
        row["max_context"] = cfg.max_position_embeddings
    try:
        return ModelSpec(**row)
    except ValidationError as err:
        raise HetserveError(validation_message(err, str(path))) from None


def get_model(name: str) -> ModelSpec:
    """A bundled model by name or alias, or a config.json by path."""
    p = Path(name)
    if name.endswith(".json") or p.is_file():
        return from_hf_config(p)
    if p.is_dir() and (p / "config.json").is_file():
        return from_hf_config(p / "config.json")
    for spec in bundled_models():
        if spec.matches(name):
            return spec
    if p.is_dir():
        raise HetserveError(f"{name}: is a folder without a config.json; give the model's "
                            "config.json (its path)")
    names = [m.name for m in bundled_models()]
    raise HetserveError(f"unknown model '{name}'{suggest(name, names)} (or give a config.json)")
