"""Save/load a compressed model as an HF-style directory:

  config.json        the transformers config + an "edgedelta" section (the SharingSpec)
  model.safetensors  every tensor once: shared bases as 'shared.g{i}.{proj}.weight',
                     everything else under its transformers name (tied lm_head omitted)
  tokenizer files, generation_config.json
  manifest.json      CompressConfig, plan, parameter accounting, source model, versions, sha256s

Loading rebuilds the structure (apply_sharing) and copies tensors in: bit-exact, and each
shared base is one Parameter object again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import IntegrityError, ModelLoadError
from ..fsutil import atomic_dir
from ..manifest import read_manifest, verify_manifest, write_manifest
from ..models.adapters import adapter_for
from ..models.loaded import LoadedModel, load_tokenizer
from .accounting import count_parameters, parameter_bytes
from .structure import SharingSpec, apply_sharing, get_spec

MODEL_FORMAT = "edgedelta-compressed-model"
WEIGHTS = "model.safetensors"


def compressed_state(model: torch.nn.Module, spec: SharingSpec) -> dict[str, torch.Tensor]:
    """Unique tensors to store: {name: tensor}, each distinct Parameter exactly once."""
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    shared_name = {}
    for gi, group in enumerate(spec.groups):
        for proj in spec.projections:
            shared_name[id(adapter.get_linear(layers[group[0]], proj).weight)] = spec.shared_name(gi, proj)
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        out[shared_name.get(id(p), name)] = p.detach().contiguous()
    for name, b in model.named_buffers(remove_duplicate=True):
        if name.endswith("inv_freq"):  # recomputed from config
            continue
        out[name] = b.detach().contiguous()
    return out


def save_compressed(loaded_or_model, out_dir, *, tokenizer=None, manifest_facts: dict[str, Any] | None = None, force: bool = False,
                    extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a compressed model directory atomically. Returns the path. `extra_files`
    ({relative name: bytes}, e.g. a training log) are written beside the weights and listed
    in the manifest."""
    is_loaded = isinstance(loaded_or_model, LoadedModel)
    model = loaded_or_model.model if is_loaded else loaded_or_model
    tokenizer = tokenizer or (loaded_or_model.tokenizer if is_loaded else None)
    spec = get_spec(model)
    if spec is None:
        raise ValueError("model is not compressed (no edgedelta sharing spec)")
    state = compressed_state(model, spec)
    counts = count_parameters(model)
    with atomic_dir(out_dir, force=force) as tmp:
        model.config.edgedelta = spec.to_dict()
        try:
            model.config.save_pretrained(tmp)
        finally:
            del model.config.edgedelta
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(state, tmp / WEIGHTS, metadata={"format": MODEL_FORMAT})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            (tmp / "tokenizer.model").unlink(missing_ok=True)
        for rel, data in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        facts = dict(manifest_facts or {})
        facts["sharing"] = spec.to_dict()
        facts["parameters"] = {**counts, "bytes_fp32": parameter_bytes(counts["total"], "fp32")}
        write_manifest(tmp, MODEL_FORMAT, facts)
    return Path(out_dir)


def build_compressed_skeleton(config, spec: SharingSpec, dtype=torch.float32) -> torch.nn.Module:
    """An (uninitialised) model with the compressed structure, ready for weights."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=adapter_for(config).attn_implementation(config))
    model.tie_weights()  # tied lm_head is stored once, as the embedding
    apply_sharing(model, spec)
    model.edgedelta_spec = spec
    return model.eval()


def load_compressed(path, dtype=torch.float32, verify: bool = True):
    """Load a compressed directory (manifest checked first). Returns LoadedModel."""
    from transformers import AutoConfig

    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"'{path}' is a '{manifest.get('format')}', not an edgedelta compressed model")
    if verify:
        verify_manifest(path, manifest)  # before any weight is used
    cfg_dict = json.loads((path / "config.json").read_text())
    spec = SharingSpec.from_dict(cfg_dict.pop("edgedelta"))
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "edgedelta"):
        del config.edgedelta
    adapter_for(config)
    model = build_compressed_skeleton(config, spec, torch.float32)
    try:
        state = load_file(path / WEIGHTS)
    except (SafetensorError, OSError) as e:
        raise IntegrityError(f"cannot read '{path / WEIGHTS}': {e}") from None
    _copy_state(model, spec, state, path)
    model.to(dtype)
    tok = load_tokenizer(path)
    return LoadedModel(model, tok, path, {"kind": "compressed", "path": str(path.resolve()), "source": manifest.get("source", {})})


@torch.no_grad()
def _copy_state(model, spec: SharingSpec, state: dict[str, torch.Tensor], path: Path) -> None:
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    targets: dict[str, torch.Tensor] = {}
    for gi, group in enumerate(spec.groups):
        for proj in spec.projections:
            targets[spec.shared_name(gi, proj)] = adapter.get_linear(layers[group[0]], proj).weight
    shared_ids = {id(t) for t in targets.values()}
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) not in shared_ids:
            targets[name] = p
    for name, b in model.named_buffers(remove_duplicate=True):
        if not name.endswith("inv_freq"):
            targets[name] = b
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise IntegrityError(f"'{path / WEIGHTS}' does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in targets.items():
        src = state[name]
        if src.shape != t.shape:
            raise IntegrityError(f"'{path / WEIGHTS}': tensor '{name}' has shape {tuple(src.shape)}, expected {tuple(t.shape)}")
        t.copy_(src)
