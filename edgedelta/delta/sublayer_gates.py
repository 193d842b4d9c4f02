"""Sub-layer gates fitted on real sub-layer outputs (ReZero-style, one scalar per sub-layer).

The gate on a shared layer's last projection (o for attention, down for the MLP) scales the
whole sub-layer's contribution to the residual stream: h ← h + g·f̂(norm(h)). It is fitted
on the sub-layer's actual output, so the errors of q/k/v (or gate/up) and of every earlier
compressed layer are included, not just the gated projection's own.

One forward pass of the student over the calibration batch, layer by layer in order: at each
gated sub-layer the ORIGINAL sub-layer is run on the same input, giving the target T, and

    g = ⟨T − b, Â⟩ / ‖Â‖²,   Â = f̂(x) − b (ungated student output, b = the projection's bias)

is the least-squares scale. Its residual error ‖T − b − gÂ‖² ≤ ‖T − b‖²: a gated layer is
never further from its original than removing the sub-layer would be (g = 0). The gated
output is passed on, so later layers are fitted on the inputs they will really see."""

from __future__ import annotations

import torch

from ..models.adapters import ModelAdapter
from ..models.layer_inputs import StopForward, stop_after
from .structure import SharingSpec

GATED_PROJECTIONS = ("o", "down")  # the last projection of each sub-layer: its gate scales the sub-layer


@torch.no_grad()
def fit_sublayer_gates(student, original_layers, adapter: ModelAdapter, spec: SharingSpec, calib_ids: torch.Tensor) -> dict[str, float]:
    """Set every gate of `spec` (on o/down) to its least-squares value on `calib_ids`
    (n, seq_len), in layer order. Returns {"layer.proj": g}. `original_layers[li]` is the
    uncompressed decoder layer li (a ModuleList or a dict holding at least the grouped
    layers); nothing but the gates changes."""
    s_layers, o_layers = adapter.decoder_layers(student), original_layers
    # an anchor layer is exact: its target equals its output, g = 1 (kept exactly, so the
    # exporter emits no Mul for it)
    anchors = set(spec.anchors or ())
    gated = sorted((li, p) for g in spec.groups for li in g if li not in anchors for p in spec.gates)
    fitted: dict[str, float] = {}
    hooks = []

    def make_hook(li: int, proj: str):
        teacher_sub = o_layers[li].get_submodule(adapter.sublayer_path(proj))
        lin = adapter.get_linear(s_layers[li], proj)

        def hook(_module, args, kwargs, out):
            y = out[0] if isinstance(out, tuple) else out  # (batch, seq, hidden), computed with gate = 1
            t = teacher_sub(*args, **kwargs)
            t = t[0] if isinstance(t, tuple) else t
            bias = lin.bias if lin.bias is not None else 0.0
            a, t = (y - bias).double(), (t - bias).double()
            g = float((t * a).sum() / (a * a).sum().clamp_min(1e-30))
            lin.gate.fill_(g)
            fitted[f"{li}.{proj}"] = g
            y = (a * g + bias).to(y.dtype)
            return (y, *out[1:]) if isinstance(out, tuple) else y
        return hook

    for li, proj in gated:
        adapter.get_linear(s_layers[li], proj).gate.fill_(1.0)  # the hook sees the ungated output
        sub = s_layers[li].get_submodule(adapter.sublayer_path(proj))
        hooks.append(sub.register_forward_hook(make_hook(li, proj), with_kwargs=True))
    # the forward ends after the last gated layer: no later layer, and no logits (5 GB for
    # 32 x 256 tokens of a 152k-token vocabulary)
    if gated:
        hooks.append(stop_after(s_layers[gated[-1][0]]))
    was_training = student.training
    try:
        student.eval()
        device = next(student.parameters()).device
        student(input_ids=calib_ids.to(device), use_cache=False)  # one batch: each g sees every token
    except StopForward:
        pass
    finally:
        for h in hooks:
            h.remove()
        student.train(was_training)
    return fitted
