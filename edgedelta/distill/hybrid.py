"""The hybrid model of progressive module replacement, built from one pure primitive,
`replace(model, name, module)`.

The student (the compressed model) is the hybrid: for every compressed decoder layer it
holds two candidates, the teacher's original layer (frozen, the very same module object as
in the teacher, so no copy) and its own compressed layer (whose shared base is one
Parameter for the whole group). `set_active(mask)` swaps the chosen candidate into the
decoder stack; the training loop only calls it with the schedule's sample.

Reusing the teacher: layers before the first *active* compressed layer compute exactly what
the teacher computed (same weights, same input), so the hybrid replaces them by a constant
module returning the teacher's recorded output of the last of them (`teacher_prefix`)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..models.adapters import ModelAdapter, adapter_for


def replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put `module` at the dotted submodule path `name` of `model`; return the old module."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent[int(attr)] if attr.isdigit() and isinstance(parent, (nn.ModuleList, nn.Sequential)) else getattr(parent, attr)
    if attr.isdigit() and isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(attr)] = module
    else:
        setattr(parent, attr, module)
    return old


def layer_names(model: nn.Module, adapter: ModelAdapter | None = None) -> list[str]:
    """Dotted names of the decoder layers inside `model`, e.g. 'model.layers.3'."""
    adapter = adapter or adapter_for(model.config)
    stack = adapter.decoder_layers(model)
    for name, mod in model.named_modules():
        if mod is stack:
            return [f"{name}.{i}" for i in range(len(stack))]
    raise ValueError("decoder layer stack not found in the model")


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor, or a tuple in older
    transformers / other architectures)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class _Constant(nn.Module):
    """Stands in for a decoder layer: ignores its input, returns a recorded layer output. It
    carries the layer's `attention_type`, which the decoder loop of Qwen2, Qwen3 and Gemma 2/3
    reads from every layer to pick its mask (sliding or full)."""

    def __init__(self, value: Any, like: nn.Module):
        super().__init__()
        self.value = value
        if hasattr(like, "attention_type"):
            self.attention_type = like.attention_type

    def forward(self, *args, **kwargs):
        return self.value


class LayerRecorder:
    """Forward hooks recording decoder layers' outputs by reference: {layer index: output}.
    `modules` maps a layer index to the module to watch."""

    def __init__(self, modules: dict[int, nn.Module]):
        self.outputs: dict[int, Any] = {}
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in modules.items()]

    def _hook(self, i: int):
        def hook(_mod, _args, output):
            self.outputs[i] = output
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "LayerRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HybridModel:
    """Progressive-replacement view of a compressed student.

    student: the compressed model (trained in place; saved at the end)
    teacher: the original model (frozen); its layers at `layers` are the originals
    layers: indices of the compressed decoder layers (every layer of every sharing group)
    source_layers: per student layer, the teacher layer it was (None: the same index). Layers
      removed before sharing (CompressConfig.drop_layers) have no student layer: they are
      gone from step 0, only the shared layers are replaced progressively. The teacher's
      modules keep the teacher's KV-cache slots: run the hybrid with use_cache=False (as the
      trainer does); all_compressed() is the pure student, cache and all."""

    def __init__(self, student: nn.Module, teacher: nn.Module, layers: Sequence[int], source_layers: Sequence[int] | None = None):
        self.student = student
        adapter = adapter_for(student.config)
        self.names = layer_names(student, adapter)
        s_layers, t_layers = adapter.decoder_layers(student), adapter.decoder_layers(teacher)
        self.source = list(range(len(s_layers))) if source_layers is None else [int(i) for i in source_layers]
        if len(self.source) != len(s_layers) or (self.source and self.source[-1] >= len(t_layers)):
            raise ValueError(f"student has {len(s_layers)} layers, teacher {len(t_layers)}, source layers {self.source}")
        self.layers = sorted(int(i) for i in layers)
        self.compressed = {i: s_layers[i] for i in self.layers}
        self.original = {i: t_layers[self.source[i]] for i in self.layers}
        # teacher outputs can stand in for student layers only up to the first removed layer
        self.same_prefix = next((i for i, t in enumerate(self.source) if i != t), len(self.source))
        self.active = torch.ones(len(self.layers), dtype=torch.bool)

    @classmethod
    def for_spec(cls, student: nn.Module, teacher: nn.Module, spec, layers_adapted: bool) -> "HybridModel":
        """The hybrid distillation trains: it swaps every layer of every sharing group, or every
        layer once the unshared ones are adapted (distill's 'layer-lora'; they no longer compute
        what the teacher's do, so no teacher prefix stands in for them)."""
        n_layers = len(adapter_for(student.config).decoder_layers(student))
        layers = range(n_layers) if layers_adapted else [li for g in spec.groups for li in g]
        return cls(student, teacher, layers, spec.source_layers)

    @property
    def num_layers(self) -> int:
        return len(self.names)

    def set_active(self, mask: torch.Tensor) -> None:
        """mask[j] True -> compressed layer self.layers[j] is in the stack, else the original."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        for j, i in enumerate(self.layers):
            replace(self.student, self.names[i], self.compressed[i] if mask[j] else self.original[i])
        self.active = mask.clone()

    @contextlib.contextmanager
    def all_compressed(self) -> Iterator[nn.Module]:
        """The pure student (e.g. to save or evaluate it); restores the current mask after."""
        mask = self.active
        self.set_active(torch.ones(len(self.layers), dtype=torch.bool))
        try:
            yield self.student
        finally:
            self.set_active(mask)

    def watch(self, layers: list[int]) -> dict[int, nn.Module]:
        """The active compressed modules at `layers` (for hidden-state losses)."""
        return {i: self.compressed[i] for i in layers}

    def active_layers(self) -> list[int]:
        return [i for j, i in enumerate(self.layers) if self.active[j]]

    def teacher_index(self, layer: int) -> int:
        """The teacher layer that student layer `layer` was."""
        return self.source[layer]

    def prefix_cut(self) -> int:
        """Student layers 0..cut-1 compute exactly what the teacher's layers 0..cut-1 do
        (before the first active compressed layer and the first removed one)."""
        act = self.active_layers()
        return min(act[0] if act else self.num_layers, self.same_prefix)

    @contextlib.contextmanager
    def teacher_prefix(self, teacher_outputs: dict[int, Any]) -> Iterator[int]:
        """Replace the layers before prefix_cut() by the teacher's recorded output there
        (exact reuse). Yields the cut index (0 = nothing reused)."""
        cut = self.prefix_cut()
        if cut == 0 or (cut - 1) not in teacher_outputs:
            yield 0
            return
        value = teacher_outputs[cut - 1]
        old = [replace(self.student, self.names[i], _Constant(value, self.student.get_submodule(self.names[i])))
               for i in range(cut)]
        try:
            yield cut
        finally:
            for i, mod in enumerate(old):
                replace(self.student, self.names[i], mod)


class WholeStudent:
    """The HybridModel interface for a student with nothing to swap (e.g. a layer-removal
    baseline being healed): always 'active', no teacher prefix, no hidden-state targets."""

    layers = [0]

    def __init__(self, student: nn.Module):
        self.student = student
        self.active = torch.ones(1, dtype=torch.bool)

    def set_active(self, mask: torch.Tensor) -> None:
        pass

    def active_layers(self) -> list[int]:
        return [0]

    def prefix_cut(self) -> int:
        return 0

    def teacher_index(self, layer: int) -> int:
        return layer

    def watch(self, layers: list[int]) -> dict[int, nn.Module]:
        return {}

    @contextlib.contextmanager
    def teacher_prefix(self, teacher_outputs) -> Iterator[int]:
        yield 0

    @contextlib.contextmanager
    def all_compressed(self) -> Iterator[nn.Module]:
        yield self.student
