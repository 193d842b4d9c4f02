"""Tiny model directories on disk, plain and DeltaLLM-compressed, for every supported
architecture (build in well under a second; reusable by any test):

    tiny_model_dir(tmp / "plain", "llama")
    tiny_compressed_dir(tmp / "comp", "qwen2")   # groups [[0,1],[2,3]], rank 4, gates on o/down
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny import tiny_model, tiny_tokenizer


def tiny_model_dir(path: Path, arch: str = "llama", seed: int = 0, vocab: int = 128, hidden: int = 32) -> Path:
    """A plain HF directory: config.json, model.safetensors, tokenizer files."""
    model = tiny_model(arch, seed=seed, vocab=vocab, hidden=hidden)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer(vocab).save_pretrained(path)
    return Path(path)


def tiny_compressed_model(arch: str = "llama", seed: int = 0, vocab: int = 128, rank: int = 4,
                          groups=((0, 1), (2, 3)), gates=("o", "down"), scaled=(), hidden: int = 32):
    """A compressed model in memory: every projection shared within `groups`, random
    non-zero deltas, gates and base scales α on `scaled` (so losing any changes the logits)."""
    from edgedelta.delta.layer import DeltaLinear
    from edgedelta.delta.structure import SharingSpec, apply_sharing
    from edgedelta.models.adapters import adapter_for

    model = tiny_model(arch, seed=seed, vocab=vocab, hidden=hidden)
    adapter = adapter_for(model.config)
    projections = list(adapter.projections)
    spec = SharingSpec(groups=[list(g) for g in groups], projections=projections,
                       ranks={p: rank for p in projections}, gates=[g for g in gates if g in projections],
                       scaled=[p for p in scaled if p in projections])
    apply_sharing(model, spec, adapter)
    model.edgedelta_spec = spec
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeltaLinear):
                m.delta_A.copy_(0.05 * torch.randn(m.delta_A.shape, generator=g))
                m.delta_B.copy_(0.05 * torch.randn(m.delta_B.shape, generator=g))
                if m.gate is not None:
                    m.gate.fill_(0.5 + torch.rand((), generator=g).item())
                if getattr(m, "base_scale", None) is not None:
                    m.base_scale.fill_(0.5 + torch.rand((), generator=g).item())
    return model.eval()


def tiny_compressed_dir(path: Path, arch: str = "llama", seed: int = 0, vocab: int = 128, **kw) -> Path:
    """An edgedelta compressed directory (save_compressed) of `tiny_compressed_model`."""
    from edgedelta.delta.storage import save_compressed

    model = tiny_compressed_model(arch, seed=seed, vocab=vocab, **kw)
    return save_compressed(model, path, tokenizer=tiny_tokenizer(vocab))
