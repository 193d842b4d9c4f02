"""ArchFacts: what the decoder graph needs to know about an architecture, read once from its
HF config and model adapter (one small declarative record), and whether ONNX Runtime's
GroupQueryAttention can run its attention."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgedelta.errors import ModelLoadError

# activations by the HF config's hidden_act
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu", "gelu_new")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class ArchFacts:
    """What the graph needs to know about an architecture, read from its HF config."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    act: str
    scaling: float  # attention score scale (head_dim ** -0.5, or query_pre_attn_scalar ** -0.5 for Gemma 2/3)
    inv_freq: tuple[float, ...]  # (rotary_dim / 2,) RoPE frequencies
    rope_scale: float  # multiplies cos/sin (yarn/longrope "attention_factor"; 1 otherwise)
    embed_scale: float | None  # Gemma multiplies embeddings by sqrt(hidden)
    sliding_windows: tuple[int | None, ...]  # per layer
    fused: dict  # fused projection -> sizes of its parts (phi3 qkv, gate_up)
    max_positions: int = 0  # config.max_position_embeddings: rows of GroupQueryAttention's cos/sin cache
    attn_softcap: float | None = None  # Gemma 2: scores <- cap·tanh(scores/cap) after the scale, before the mask
    final_softcap: float | None = None  # Gemma 2: logits <- cap·tanh(logits/cap)
    # Gemma 3: sliding layers rotate with their own table (rope_local_base_freq, no scaling)
    local_inv_freq: tuple[float, ...] | None = None
    local_rope_scale: float = 1.0

    def rope_table(self, i: int) -> str:
        """Which rotary table layer i reads: 'local' (a Gemma 3 sliding layer) or 'global'."""
        return "local" if self.local_inv_freq is not None and self.sliding_windows[i] is not None else "global"

    def rope_of(self, table: str) -> tuple[tuple[float, ...], float]:
        """(inv_freq, cos/sin scale) of a rotary table."""
        return (self.local_inv_freq, self.local_rope_scale) if table == "local" else (self.inv_freq, self.rope_scale)

    @classmethod
    def from_model(cls, model, adapter) -> "ArchFacts":
        import torch

        cfg = model.config
        attn = adapter.decoder_layers(model)[0].self_attn
        head_dim = int(attn.head_dim)
        act = getattr(cfg, adapter.activation_attr, None) or "silu"
        if act not in ACTIVATIONS:
            raise ModelLoadError(f"activation '{act}' is not supported by the ONNX exporter; supported: {', '.join(ACTIVATIONS)}")
        rope = getattr(cfg, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in STATIC_ROPE:
            raise ModelLoadError(f"RoPE type '{rope_type}' is not supported by the ONNX exporter (it depends on the sequence length); supported: {', '.join(STATIC_ROPE)}")
        rotary = model.model.rotary_emb
        inv_freq = rotary.inv_freq.detach().to(torch.float32).cpu().numpy()
        local = getattr(model.model, adapter.local_rotary) if adapter.local_rotary else None
        n = cfg.num_hidden_layers
        windows = adapter.layer_windows(cfg)
        heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
        fused = {}
        if "qkv" in adapter.fused:
            fused["qkv"] = (heads * head_dim, kv * head_dim, kv * head_dim)
        if "gate_up" in adapter.fused:
            fused["gate_up"] = (cfg.intermediate_size, cfg.intermediate_size)
        return cls(
            num_layers=n, hidden=cfg.hidden_size, heads=heads, kv_heads=kv, head_dim=head_dim, vocab=cfg.vocab_size,
            eps=float(cfg.rms_norm_eps), act=act, scaling=float(attn.scaling), inv_freq=tuple(float(f) for f in inv_freq),
            rope_scale=float(getattr(rotary, "attention_scaling", 1.0)),
            embed_scale=math.sqrt(cfg.hidden_size) if adapter.embed_scale_sqrt_hidden else None,
            sliding_windows=windows, fused=fused, max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 0),
            attn_softcap=_cap(getattr(cfg, "attn_logit_softcapping", None)),
            final_softcap=_cap(getattr(cfg, "final_logit_softcapping", None)),
            local_inv_freq=None if local is None else tuple(float(f) for f in local.inv_freq.detach().to(torch.float32).cpu().numpy()),
            local_rope_scale=1.0 if local is None else float(getattr(local, "attention_scaling", 1.0)),
        )

    @property
    def rotary_dim(self) -> int:
        return 2 * len(self.inv_freq)


def _cap(value) -> float | None:
    """A soft-capping value from the config: None or 0 means none."""
    return float(value) if value else None


def gqa_unsupported(facts: ArchFacts) -> str | None:
    """Why ONNX Runtime's GroupQueryAttention cannot run this model's attention, or None.
    Its CPU kernel needs head_dim a multiple of 16 and rotates the whole head. Its CUDA
    kernel takes fp16 and bf16 only (onnxruntime-gpu 1.31), so an fp32 graph's attention runs
    on the CPU under the CUDA provider; an fp16 graph's runs on the GPU."""
    if facts.head_dim % 16:
        return f"head_dim {facts.head_dim} is not a multiple of 16"
    if facts.rotary_dim != facts.head_dim:
        return f"partial rotary ({facts.rotary_dim} of {facts.head_dim})"
    if not facts.max_positions:
        return "the config has no max_position_embeddings"
    return None
