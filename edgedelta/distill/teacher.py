"""The teacher of a distillation: which model a compressed student was made from (its
manifest's `source`), and the check that refuses any other."""

from __future__ import annotations

import torch
from torch import nn

from ..delta.structure import SharingSpec
from ..errors import ConfigError
from ..models.adapters import adapter_for


def teacher_spec_from(source: dict) -> str:
    """load_model() argument for a compressed model's recorded source."""
    kind = (source or {}).get("kind")
    if kind == "default":
        return "default"
    if kind in ("hf", "gguf") and source.get("path"):
        return source["path"]
    raise ConfigError(f"the student's manifest does not name a usable source model ({source!r}); pass the teacher explicitly (--teacher)")


@torch.no_grad()
def check_teacher(student: nn.Module, teacher: nn.Module, spec: SharingSpec, compare_layers: bool = True) -> None:
    """Refuse a teacher the student was not made from: same architecture and sizes, and the
    embedding and (with compare_layers) every parameter of the unshared layers identical
    (student layer i against the teacher layer it was: spec.source_of(i))."""
    for key in ("model_type", "hidden_size", "vocab_size", "intermediate_size"):
        a, b = getattr(student.config, key, None), getattr(teacher.config, key, None)
        if a != b:
            raise ConfigError(f"the student was not made from this teacher: {key} is {a} in the student, {b} in the teacher")
    adapter = adapter_for(student.config)
    s_layers, t_layers = adapter.decoder_layers(student), adapter.decoder_layers(teacher)
    expected = len(t_layers) - len(spec.removed_layers(len(t_layers)))
    if len(s_layers) != expected or spec.source_of(len(s_layers) - 1) >= len(t_layers):
        raise ConfigError(f"the student was not made from this teacher: num_hidden_layers is {len(s_layers)} in the student, "
                          f"{len(t_layers)} in the teacher" + (f" (less the {len(t_layers) - expected} removed)" if spec.source_layers else ""))
    pairs = [("embedding", adapter.embed_tokens(student).weight, adapter.embed_tokens(teacher).weight)]
    grouped = {li for g in spec.groups for li in g}
    for li in range(len(s_layers)):
        if compare_layers and li not in grouped:
            t_params = dict(t_layers[spec.source_of(li)].named_parameters())
            for n, p in s_layers[li].named_parameters():
                pairs.append((f"layer {li} {n}", p, t_params.get(n)))
    for what, a, b in pairs:
        if b is None or a.shape != b.shape or not torch.allclose(a.float(), b.float().to(a.device), rtol=1e-5, atol=1e-6):
            raise ConfigError(f"the student was not made from this teacher: {what} differs")
