"""Build a plan's model: consecutive layers share a base plus per-layer deltas. Two phases:
choose the structure (explicit groups, or the budget planner), then compute values (init.py)
from the ORIGINAL weights and calibration covariances. The input model is never modified.
Removal before sharing (removal.py) and the search over removal counts (drop_search.py) call
this on the model that removal leaves."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..models.adapters import ModelAdapter, adapter_for
from ..models.similarity import block_influence
from ..models.surgery import copy_model
from .accounting import count_parameters
from .calibration import Calibration, StreamedCovariances, WhiteningCache
from .config import CompressConfig
from .groups import build_spec, fill_group
from .plan import SENSITIVITY_SEQUENCES, kl_to, log_probs, plan_budget
from .structure import SharingSpec, apply_sharing
from .sublayer_gates import fit_sublayer_gates


@dataclass
class CompressResult:
    model: torch.nn.Module
    spec: SharingSpec
    plan: dict
    report: dict = field(default_factory=dict)


def share_layers(model, cfg: CompressConfig, calib: Calibration, progress: bool = True,
                 reuse_weights: bool = False) -> CompressResult:
    """A compressed copy of `model` with cfg's groups (explicit, or planned for
    cfg.target_params) shared. cfg.drop_layers must be 0. calib.covs / calib.influence, when
    given, were measured on `model` with calib.ids and are reused; otherwise the input
    covariances are computed layer by layer as they are asked for (StreamedCovariances).
    reuse_weights: the copy keeps `model`'s tensors where compression leaves them unchanged
    (surgery.copy_model)."""
    if cfg.drop_layers != 0:
        raise ValueError(f"share_layers shares only; drop_layers {cfg.drop_layers!r} goes through compress()")
    adapter = adapter_for(model.config)
    num_layers = len(adapter.decoder_layers(model))
    projections = cfg.shared_projections(adapter)
    ids = calib.ids if cfg.needs_calibration else None
    covs = calib.covs
    influence = None
    if cfg.base == "anchor":
        influence = calib.influence if calib.influence is not None else block_influence(model, ids)
    original = count_parameters(model)["total"]
    whiten = WhiteningCache(cfg.damping)  # one per call: factors are reused across candidate groups

    if cfg.target_params is not None:
        if covs is None:
            covs = StreamedCovariances(model, adapter, projections, ids, progress=progress)
        spec, student, init_report, plan = _build_best_plan(model, cfg, adapter, covs, ids, whiten, influence, progress,
                                                            reuse_weights)
    else:
        groups = cfg.resolve_groups(num_layers)
        spec = build_spec(cfg, adapter, groups, model, influence=influence)
        if covs is None and ids is not None:
            covs = StreamedCovariances(model, adapter, projections, ids, progress=progress)
        plan = {"mode": "explicit", "groups": groups}
        student, init_report = build_student(model, adapter, spec, cfg, covs, whiten, ids, progress, reuse_weights)
    counts = count_parameters(student)
    plan.update({
        "groups": spec.groups, "anchors": spec.anchors, "projections": spec.projections, "ranks": spec.ranks,
        "gates": spec.gates, "scaled": spec.scaled,
        "original_params": original, "compressed_params": counts["total"], "ratio": counts["total"] / original,
    })
    return CompressResult(student, spec, plan, {"init": init_report, "parameters": counts})


def _build_best_plan(model, cfg: CompressConfig, adapter: ModelAdapter, covs, ids: torch.Tensor, whiten, influence, progress: bool,
                     reuse_weights: bool = False):
    """Budget mode: build each candidate plan of plan_budget and keep the one whose whole model
    is closest to the original (single-group costs do not add up exactly).
    Returns (spec, student, init report, plan report)."""
    candidates, ranks, plan = plan_budget(model, cfg, adapter, covs, ids, progress=progress, whiten=whiten, influence=influence)
    built = {}
    for name, groups in candidates.items():
        if any(groups == b[0].groups for b in built.values()):
            continue
        spec = build_spec(cfg, adapter, groups, model, ranks, influence)
        built[name] = (spec, *build_student(model, adapter, spec, cfg, covs, whiten, ids, progress, reuse_weights))
    if isinstance(covs, StreamedCovariances):
        covs.release()  # every candidate is built: its statistics are not read again
    whiten.clear()
    if len(built) > 1:
        # a row at a time: the original's and a candidate's log-probs are (T, vocab) each
        # instead of (rows, T, vocab) (1.2 GB for 8 x 256 tokens of a 152k-token vocabulary)
        kls = dict.fromkeys(built, 0.0)
        rows = ids[:2 * SENSITIVITY_SEQUENCES]
        for row in rows.split(1):
            ref = log_probs(model, row)
            for name, b in built.items():
                kls[name] += kl_to(ref, log_probs(b[1], row)) / len(rows)
        plan["candidates"] = {name: {"groups": b[0].groups, "kl": round(kls[name], 4)} for name, b in built.items()}
        keep = min(plan["candidates"], key=lambda n: plan["candidates"][n]["kl"])
    else:
        keep = next(iter(built))
    plan["chosen"] = keep
    return (*built[keep], plan)


def build_student(model, adapter: ModelAdapter, spec: SharingSpec, cfg: CompressConfig, covs, whiten, ids, progress: bool,
                  reuse_weights: bool = False):
    """A compressed copy of `model` with `spec`'s structure and initial values: (student, init
    report). Sharing writes only into tensors it creates (bases, deltas, gates), so with
    reuse_weights the student keeps `model`'s other tensors instead of copies."""
    student = copy_model(model, reuse_weights)
    apply_sharing(student, spec, adapter)
    student.edgedelta_spec = spec
    src_layers = adapter.decoder_layers(model)
    report = {}
    for gi in tqdm(range(len(spec.groups)), desc="init groups", disable=not progress, leave=False):
        report[f"g{gi}:{spec.groups[gi]}"] = fill_group(
            student, lambda li, p: adapter.get_linear(src_layers[li], p).weight, adapter, spec, gi, cfg, covs, whiten)
    if spec.gates:
        report["sublayer_gates"] = {k: round(g, 4) for k, g in fit_sublayer_gates(student, src_layers, adapter, spec, ids).items()}
    return student, report
