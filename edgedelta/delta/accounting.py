"""Exact parameter accounting: unique parameters (a shared tensor counts once), by component,
and bytes at a dtype."""

from __future__ import annotations

from torch import nn

from .layer import DeltaLinear

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


def unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(first name, parameter) for each distinct Parameter object (tied/shared counted once)."""
    return list(model.named_parameters(remove_duplicate=True))


def count_parameters(model: nn.Module) -> dict:
    """{'total': unique params, 'by_component': {...}} with components:
    embedding (incl. tied lm_head), lm_head (untied only), shared_base, delta, gate (gates and base scales),
    attn, mlp (unshared projection weights/biases), norm, other."""
    shared_ids = {id(m.weight) for m in model.modules() if isinstance(m, DeltaLinear)}
    comp: dict[str, int] = {}
    for name, p in unique_parameters(model):
        n = p.numel()
        leaf = name.rsplit(".", 1)[-1]
        if id(p) in shared_ids:
            key = "shared_base"
        elif leaf in ("delta_A", "delta_B"):
            key = "delta"
        elif leaf in ("gate", "base_scale"):
            key = "gate"
        elif "embed" in name or name.startswith("lm_head"):
            key = "embedding" if "embed" in name else "lm_head"
        elif "norm" in name:
            key = "norm"
        elif ".self_attn." in name:
            key = "attn"
        elif ".mlp." in name:
            key = "mlp"
        else:
            key = "other"
        comp[key] = comp.get(key, 0) + n
    return {"total": sum(comp.values()), "by_component": dict(sorted(comp.items()))}


def parameter_bytes(num_params: int, dtype: str = "fp32") -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype '{dtype}'; allowed: {', '.join(DTYPE_BYTES)}")
    return int(num_params * DTYPE_BYTES[dtype])
