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
    # the norm the attention reads, and the norm the MLP reads (Llama's
    # post_attention_layernorm; Gemma 2/3's pre_feedforward_layernorm)
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    # Gemma 2/3: RMSNorm of each sub-layer's OUTPUT before its residual add,
    # h <- h + norm(attn(input_norm(h))), h <- h + norm(mlp(post_attention_norm(h)))
    attn_output_norm: str | None = None
    mlp_output_norm: str | None = None
    # Qwen3, Gemma 3: per-head RMSNorm (weight (head_dim,)) of q and k before rotary; paths
    # in a layer. Per layer, never shared by compression.
    qk_norms: tuple[str, str] | None = None
    # Gemma's RMSNorm multiplies by (1 + weight) and scales embeddings by sqrt(hidden).
    norm_weight_offset: float = 0.0
    embed_scale_sqrt_hidden: bool = False
    # config attribute naming the MLP activation (Gemma 2/3: hidden_activation)
    activation_attr: str = "hidden_act"
    # config.sliding_window applies to every layer (Mistral, Phi-3); otherwise only to the
    # layers config.layer_types calls "sliding_attention"
    window_on_every_layer: bool = False
    # Gemma 3: the decoder stack's attribute holding the sliding layers' own rotary embedding
    # (another base frequency); None: one rotary embedding for every layer
    local_rotary: str | None = None
    # HF's sdpa attention drops attention-logit soft-capping: a model with it is loaded with
    # eager attention so compression and the export's parity reference compute what it defines
    # (attn_implementation)
    softcap_needs_eager: bool = False
    # fused projections: short name -> the unfused parts, in output-row order
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def layer_windows(self, config) -> tuple[int | None, ...]:
        """Per layer its sliding window W (a token attends to its W latest positions), None for
        a layer that attends to every position. `config`: a transformers config or its dict."""
        get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
        n, window, layer_types = int(get("num_hidden_layers")), get("sliding_window"), get("layer_types")
        if not window:
            return (None,) * n
        if self.window_on_every_layer:
            return (int(window),) * n
        return tuple(int(window) if t == "sliding_attention" else None for t in layer_types or ["full_attention"] * n)

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

    def attn_implementation(self, config) -> str | None:
        """The transformers attention implementation this model must be loaded with, or None
        for transformers' default: 'eager' when the config soft-caps attention logits and the
        adapter says sdpa would drop the cap (Gemma 2)."""
        if self.softcap_needs_eager and getattr(config, "attn_logit_softcapping", None):
            return "eager"
        return None


def _base(model: nn.Module) -> nn.Module:
    # LlamaForCausalLM.model (decoder stack) or the stack itself
    return model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model


_LLAMA_PROJ = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
_LLAMA_KINDS = {"q": ATTN, "k": ATTN, "v": ATTN, "o": ATTN, "gate": MLP, "up": MLP, "down": MLP}
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
# Gemma 2/3: four norms per layer, (1 + w) norms, sqrt(hidden)-scaled embedding, GELU (tanh)
_GEMMA2 = dict(post_attention_norm="pre_feedforward_layernorm", attn_output_norm="post_attention_layernorm",
               mlp_output_norm="post_feedforward_layernorm", norm_weight_offset=1.0, embed_scale_sqrt_hidden=True,
               activation_attr="hidden_activation")

# Explicit registry keyed by transformers' config.model_type (no registration by import).
# "llama" covers Llama 2 and 3.x (rope_scaling "llama3" is read from the config).
ADAPTERS: dict[str, ModelAdapter] = {
    "llama": ModelAdapter("llama", _LLAMA_PROJ, _LLAMA_KINDS),
    "mistral": ModelAdapter("mistral", _LLAMA_PROJ, _LLAMA_KINDS, window_on_every_layer=True),
    "qwen2": ModelAdapter("qwen2", _LLAMA_PROJ, _LLAMA_KINDS),
    "qwen3": ModelAdapter("qwen3", _LLAMA_PROJ, _LLAMA_KINDS, qk_norms=_QK_NORMS),
    "gemma": ModelAdapter("gemma", _LLAMA_PROJ, _LLAMA_KINDS, norm_weight_offset=1.0, embed_scale_sqrt_hidden=True),
    "gemma2": ModelAdapter("gemma2", _LLAMA_PROJ, _LLAMA_KINDS, softcap_needs_eager=True, **_GEMMA2),
    "gemma3_text": ModelAdapter("gemma3_text", _LLAMA_PROJ, _LLAMA_KINDS, qk_norms=_QK_NORMS, local_rotary="rotary_emb_local",
                                softcap_needs_eager=True, **_GEMMA2),
    "phi3": ModelAdapter(
        "phi3",
        {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"},
        {"qkv": ATTN, "o": ATTN, "gate_up": MLP, "down": MLP},
        fused={"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")},
        window_on_every_layer=True,
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
