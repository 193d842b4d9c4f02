"""How much each decoder layer (and each of its sub-layers) changes the residual stream on
calibration text: the measure layer removal ranks layers by (ShortGPT's block influence,
JointDrop's sub-layer importance) and the anchor base of a sharing group is chosen by."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .adapters import ModelAdapter, adapter_for


class _Capture:
    """Forward hooks recording, per decoder layer, the residual stream at three points:
    layer input X, after attention M = X + attn(norm(X)), and layer output Y = M + mlp(norm(M)).
    Each stored as (N, H) float32 rows (padding-free calibration, so every token counts)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.layers = adapter.decoder_layers(model)
        self.adapter = adapter
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.mids: dict[int, list[torch.Tensor]] = {}
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._post(i)))
            norm = layer.get_submodule(adapter.post_attention_norm)
            self.handles.append(norm.register_forward_pre_hook(self._mid(i)))

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1, x.shape[-1]).float()

    def _pre(self, i):
        def hook(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.inputs.setdefault(i, []).append(self._flat(h))
        return hook

    def _mid(self, i):
        def hook(mod, args):
            self.mids.setdefault(i, []).append(self._flat(args[0]))
        return hook

    def _post(self, i):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            self.outputs.setdefault(i, []).append(self._flat(h))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _mean_cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    x, y = torch.cat(a), torch.cat(b)  # (N, H)
    return float(torch.nn.functional.cosine_similarity(x, y, dim=-1).mean())


@torch.no_grad()
def layer_similarities(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 4) -> list[dict]:
    """Per layer: cos(X, Y) of the whole block, cos(X, M) of the attention sub-layer and
    cos(M, Y) of the MLP sub-layer, averaged over all calibration tokens. calib_ids: (n, T)."""
    adapter = adapter_for(model.config)
    model.eval()
    device = next(model.parameters()).device
    cap = _Capture(model, adapter)
    try:
        for s in range(0, calib_ids.shape[0], batch_size):
            model(input_ids=calib_ids[s : s + batch_size].to(device), use_cache=False)
    finally:
        cap.close()
    out = []
    for i in range(len(cap.layers)):
        if i not in cap.inputs:  # a layer skipped by the forward (should not happen)
            raise ConfigError(f"layer {i} did not run during calibration")
        out.append({
            "layer": i,
            "block_cos": _mean_cos(cap.inputs[i], cap.outputs[i]),
            "attn_cos": _mean_cos(cap.inputs[i], cap.mids[i]),
            "mlp_cos": _mean_cos(cap.mids[i], cap.outputs[i]),
        })
    return out


def block_influence(model: nn.Module, calib_ids: torch.Tensor) -> list[float]:
    """ShortGPT's block influence per layer, BI = 1 − E_tokens[cos(layer input, layer output)]
    (higher = the layer changes the residual stream more = more important). calib_ids: (n, T)."""
    return [1.0 - s["block_cos"] for s in layer_similarities(model, calib_ids)]
