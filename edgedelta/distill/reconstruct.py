"""Per-group reconstruction: the cheap first stage of recovery.

For each sharing group (layers l0..l1), fit that group's trainable parameters (deltas, gates,
optionally norms / shared / LoRA) so the student's group maps the teacher's input hidden
states of layer l0 to the teacher's output hidden states of layer l1:

    min  || f_student[l0..l1](X) - f_teacher[l0..l1](X) ||² / ||f_teacher(X)||²

No vocabulary softmax and only the group's 2-3 layers in the graph, so a token costs a small
fraction of an end-to-end distillation step. Layer inputs are captured with forward
pre-hooks (with_kwargs=True), which hands over position embeddings, masks and cache
positions generically for any decoder architecture.

recon_inputs='student' feeds each group the *student's* hidden states (earlier groups
already fitted), so a group also learns to correct the error accumulated before it."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..delta.structure import SharingSpec
from ..models.adapters import adapter_for
from .hybrid import hidden_of
from .losses import hidden_mse
from .trainable import TrainableParam


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_group_io(model: nn.Module, groups: list[list[int]], ids: torch.Tensor, batch: int, device,
                     want_output: bool = True, autocast: bool = False) -> list[dict[str, list]]:
    """Run `model` on `ids` (n, T) in batches; for each group record the input hidden states
    and call kwargs of its first layer and (optionally) the output of its last layer.
    Returns per group {'x': [(b, T, H)], 'kw': [dict], 'y': [(b, T, H)]}. Stops the forward
    after the last needed layer."""
    layers = adapter_for(model.config).decoder_layers(model)
    rec = [{"x": [], "kw": [], "y": []} for _ in groups]
    last_needed = max(g[-1] if want_output else g[0] for g in groups)
    handles = []

    def pre(gi):
        def hook(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            rec[gi]["x"].append(h.detach().float())
            rec[gi]["kw"].append(kw)
            if not want_output and groups[gi][0] == last_needed:
                raise _Stop
        return hook

    def post(gi):
        def hook(_m, _a, out):
            rec[gi]["y"].append(hidden_of(out).detach().float())
            if groups[gi][-1] == last_needed:
                raise _Stop
        return hook

    for gi, g in enumerate(groups):
        handles.append(layers[g[0]].register_forward_pre_hook(pre(gi), with_kwargs=True))
        if want_output:
            handles.append(layers[g[-1]].register_forward_hook(post(gi)))
    try:
        for s in range(0, ids.shape[0], batch):
            x = ids[s:s + batch].to(device)
            try:
                with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
                    model(input_ids=x, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return rec


def _run_group(layers, group: list[int], x: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    h = x
    for li in group:
        h = hidden_of(layers[li](h, **kw))
    return h


def reconstruct_groups(student: nn.Module, teacher: nn.Module, spec: SharingSpec, trainable: list[TrainableParam],
                       ids: torch.Tensor, *, lr: float = 1e-3, epochs: int = 2, batch: int = 4, inputs: str = "teacher",
                       betas=(0.9, 0.95), clip: float = 1.0, device="cpu", autocast: bool = False,
                       progress: bool = True) -> list[dict]:
    """Fit each group in turn (in layer order). Returns per-group results: loss before and
    after (normalised MSE on the calibration tokens), steps, tokens, seconds."""
    s_layers = adapter_for(student.config).decoder_layers(student)
    # the teacher's layers that each group was (with removed layers between them, a group's
    # target is the teacher's output after the removed ones too)
    t_groups = [[spec.source_of(li) for li in g] for g in spec.groups]
    t_rec = capture_group_io(teacher, t_groups, ids, batch, device, autocast=autocast)
    results = []
    n_batches = len(t_rec[0]["x"]) if t_rec else 0
    for gi, group in enumerate(spec.groups):
        t0 = time.time()
        params = [tp.param for tp in trainable if tp.group == gi]
        if inputs == "student":  # earlier groups are fitted by now: feed their outputs
            xs, kws = (lambda r: (r["x"], r["kw"]))(capture_group_io(student, [group], ids, batch, device, want_output=False, autocast=autocast)[0])
        else:
            xs, kws = t_rec[gi]["x"], t_rec[gi]["kw"]
        ys = t_rec[gi]["y"]

        def evaluate() -> float:
            with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
                return sum(float(hidden_mse(_run_group(s_layers, group, x, kw), y)) for x, kw, y in zip(xs, kws, ys)) / max(1, len(xs))

        before = evaluate()
        steps = epochs * n_batches
        if params and steps:
            opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=0.0)
            bar = tqdm(total=steps, desc=f"reconstruct group {gi} {group}", disable=not progress, leave=False)
            k = 0
            for _ in range(epochs):
                for x, kw, y in zip(xs, kws, ys):
                    for grp in opt.param_groups:  # cosine to 10% within the group's budget
                        grp["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / steps)))
                    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
                        loss = hidden_mse(_run_group(s_layers, group, x, kw), y)
                    loss.backward()
                    if clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    k += 1
                    bar.update(1)
                    bar.set_postfix(mse=f"{loss.item():.4f}")
            bar.close()
        after = evaluate()
        tokens = sum(x.shape[0] * x.shape[1] for x in xs) * epochs
        results.append({"group": group, "mse_before": before, "mse_after": after, "steps": steps,
                        "tokens_processed": tokens, "seconds": round(time.time() - t0, 2)})
    return results
