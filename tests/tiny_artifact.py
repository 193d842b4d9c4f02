"""Test fixture: a tiny random Llama and its ONNX artifact, built offline in seconds, for the
runtime, server, evaluation and planner tests (peft/optimum-style tiny configs).

The tokenizer is a small byte-level BPE trained here on a few sentences (no hub), with
ChatML special tokens and a chat template, so chat, EOS and streaming paths are exercised.
The artifact is written by `edgedelta.export.export_onnx`, or by optimum's exporter (the
same graph interface, converted to external data + a manifest) to check that the runtime
runs optimum's graphs too."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TEXT = [
    "The pump on line three runs at 1450 rpm and its bearing temperature is 61 degrees.",
    "Check the pressure valve before restarting the conveyor belt.",
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Maintenance log: replaced filter, cleaned sensor, torque 25 Nm.",
    "Unicode: café, naïve, 温度, émigré, ß — and emoji 🙂.",
]


def build_tokenizer(out_dir: Path, vocab_size: int = 320):
    """Train a byte-level BPE tokenizer and save it (tokenizer.json + config) into out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>",
                                   model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model_dir(out_dir: Path, layers: int = 4, hidden: int = 32, seed: int = 0, max_positions: int = 256) -> Path:
    """Save a random LlamaForCausalLM (tied embeddings, GQA 4/2 heads) + tokenizer to out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # default init makes every step repeat one token: scale the layers up for varied text
        for n, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in n:
                p.mul_(10.0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def export_with_optimum(model_dir: Path, out_dir: Path, name: str | None = None) -> Path:
    """optimum's text-generation-with-past graph, weights moved to model.onnx.data, tokenizer
    + configs copied, manifest (format edgedelta-onnx) written last."""
    import onnx
    from optimum.exporters.onnx import main_export

    from edgedelta.manifest import write_manifest

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent if out_dir.parent.exists() else None) as tmp:
        main_export(str(model_dir), output=tmp, task="text-generation-with-past", no_post_process=True, do_validation=False, device="cpu")
        out_dir.mkdir(parents=True, exist_ok=True)
        m = onnx.load(str(Path(tmp) / "model.onnx"))
        onnx.save_model(m, str(out_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        for f in Path(tmp).iterdir():
            if f.suffix == ".json" or f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
                shutil.copy2(f, out_dir / f.name)
    for f in model_dir.iterdir():  # tokenizer files optimum may not copy
        if (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja")) and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    data = out_dir / "model.onnx.data"
    write_manifest(out_dir, "edgedelta-onnx", {
        "name": name or model_dir.name,
        "exporter": "optimum",
        "accounting": {"unique_weight_bytes": data.stat().st_size if data.is_file() else None},
    })
    return out_dir


def export_artifact(model_dir: Path, out_dir: Path, exporter: str = "edgedelta") -> Path:
    """exporter 'edgedelta' (edgedelta.export.export_onnx) or 'optimum' (export_with_optimum)."""
    if exporter == "optimum":
        return export_with_optimum(model_dir, out_dir)
    if exporter != "edgedelta":
        raise ValueError(f"unknown exporter '{exporter}'; allowed: edgedelta, optimum")
    from edgedelta.export import ExportConfig, export_onnx

    export_onnx(model_dir, ExportConfig(), out_dir)
    return Path(out_dir)


def build_tiny_artifact(root: Path, exporter: str = "edgedelta", **model_kwargs) -> tuple[Path, Path]:
    """(model_dir, artifact_dir) of a fresh tiny model under root."""
    root = Path(root)
    model_dir = build_tiny_model_dir(root / "tiny-model", **model_kwargs)
    art = export_artifact(model_dir, root / "tiny-onnx", exporter)
    return model_dir, art
