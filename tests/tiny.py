"""Tiny random models of every supported architecture (build in milliseconds)."""

from __future__ import annotations

import torch

# Test architectures: transformers model_types, plus "llama3" (model_type llama with Llama 3.x
# rope scaling "llama3")
ARCHS = ("llama", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text")
# a window shorter than the parity prompt (12 tokens) and its 32 decoded tokens, so both the
# prefill and the decode steps reach past it
TINY_WINDOW = 5


def tiny_config(arch: str = "llama", layers: int = 4, vocab: int = 128, hidden: int = 32):
    """hidden 32 gives head_dim 8 (the exporter's plain attention); 64 gives head_dim 16, the
    smallest GroupQueryAttention runs (export/decoder.py gqa_unsupported). Sliding-window
    architectures get TINY_WINDOW and a mix of sliding and global layers; Gemma 2 gets caps
    small enough to bend tiny random logits, and query_pre_attn_scalar unlike head_dim."""
    from transformers import AutoConfig

    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=True)
    model_type = "llama" if arch == "llama3" else arch
    if arch in ("gemma", "qwen3", "gemma2", "gemma3_text"):
        common.update(head_dim=hidden // 4)  # their configs default to 128/256
    if arch == "llama3":  # Llama 3.x frequency-dependent RoPE scaling (low frequencies stretched)
        common.update(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 32})
    if arch in ("gemma2", "gemma3_text"):
        kinds = ("sliding_attention", "full_attention") if arch == "gemma2" else ("sliding_attention",) * 2 + ("full_attention",)
        common.update(sliding_window=TINY_WINDOW, query_pre_attn_scalar=3 * hidden // 4,
                      layer_types=[kinds[i % len(kinds)] for i in range(layers)])
    if arch == "gemma2":
        common.update(attn_logit_softcapping=0.02, final_logit_softcapping=0.5)  # tiny scores are ~0.01
    if arch == "phi3":
        common.update(pad_token_id=0, tie_word_embeddings=False)
    return AutoConfig.for_model(model_type, **common)


def tiny_model(arch: str = "llama", layers: int = 4, seed: int = 0, vocab: int = 128, hidden: int = 32):
    from transformers import AutoModelForCausalLM

    from edgedelta.models.adapters import adapter_for

    torch.manual_seed(seed)
    cfg = tiny_config(arch, layers, vocab, hidden)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=adapter_for(cfg).attn_implementation(cfg))
    # norms are 1 (or 0 for gemma) at init: randomise so tests see per-layer differences
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_ids(n: int = 4, seq: int = 16, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=g)


def tiny_tokenizer(vocab: int = 128):
    """A character-level fast tokenizer with `vocab` ids: 0 <|endoftext|>, 1 <|im_start|>,
    2 <|im_end|> (eos/pad), then printable ASCII; has a chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    table = {t: i for i, t in enumerate((specials + chars)[:vocab])}
    tok = Tokenizer(models.BPE(vocab=table, merges=[], unk_token="<|endoftext|>"))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()  # characters join without spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast
