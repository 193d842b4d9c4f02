"""Model-specific facts behind a small adapter interface. Algorithms touch a model only
through its adapter: where the decoder layers are, which linear projections exist (and
which are fused), and how norms/embeddings differ. Adding an architecture = one entry in
ADAPTERS and one tiny-config test (see ADDING_A_MODEL.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import ModelLoadError

ATTN, MLP = "attn", "mlp"


@dataclass(frozen=True)
class ModelAdapter:
    name: str
    # projection short name -> attribute path inside a decoder layer
    projections: dict[str, str]
    # projection short name -> "attn" | "mlp"
    kinds: dict[str, str]
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    # Gemma's RMSNorm multiplies by (1 + weight) and scales embeddings by sqrt(hidden).
    norm_weight_offset: float = 0.0
    embed_scale_sqrt_hidden: bool = False
    # fused projections: short name -> the unfused parts, in output-row order
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # --- access --------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return _base(model).layers

    def embed_tokens(self, model: nn.Module) -> nn.Embedding:
        return _base(model).embed_tokens

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _base(model).norm

    def get_linear(self, layer: nn.Module, proj: str) -> nn.Module:
        return layer.get_submodule(self.projections[proj])

    def set_linear(self, layer: nn.Module, proj: str, module: nn.Module) -> None:
        parent_path, _, attr = self.projections[proj].rpartition(".")
        setattr(layer.get_submodule(parent_path) if parent_path else layer, attr, module)

    def sublayer_path(self, proj: str) -> str:
        """Path of the sub-layer module holding `proj` ("self_attn.o_proj" -> "self_attn")."""
        return self.projections[proj].rpartition(".")[0]

    def projections_of(self, kind: str) -> tuple[str, ...]:
        return tuple(p for p, k in self.kinds.items() if k == kind)


def _base(model: nn.Module) -> nn.Module:
    # LlamaForCausalLM.model (decoder stack) or the stack itself
    return model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model


_LLAMA_PROJ = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
_LLAMA_KINDS = {"q": ATTN, "k": ATTN, "v": ATTN, "o": ATTN, "gate": MLP, "up": MLP, "down": MLP}

# Explicit registry keyed by transformers' config.model_type (no registration by import).
ADAPTERS: dict[str, ModelAdapter] = {
    "llama": ModelAdapter("llama", _LLAMA_PROJ, _LLAMA_KINDS),
    "mistral": ModelAdapter("mistral", _LLAMA_PROJ, _LLAMA_KINDS),
    "qwen2": ModelAdapter("qwen2", _LLAMA_PROJ, _LLAMA_KINDS),
    "gemma": ModelAdapter("gemma", _LLAMA_PROJ, _LLAMA_KINDS, norm_weight_offset=1.0, embed_scale_sqrt_hidden=True),
    "phi3": ModelAdapter(
        "phi3",
        {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"},
        {"qkv": ATTN, "o": ATTN, "gate_up": MLP, "down": MLP},
        fused={"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")},
    ),
}


def supported_architectures() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(config) -> ModelAdapter:
    """The adapter for a transformers config; a clear error for an unsupported one."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ModelLoadError(
            f"unsupported architecture '{model_type}'; supported: {', '.join(supported_architectures())}"
        )
    return ADAPTERS[model_type]
