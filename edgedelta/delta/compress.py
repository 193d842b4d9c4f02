"""compress(model, CompressConfig) → a shared-plus-delta copy of the model.

Two phases: choose the structure (explicit groups, or the budget planner), then compute
values (init.py) from the ORIGINAL weights and calibration covariances. The input model is
never modified."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models.adapters import ModelAdapter, adapter_for
from .accounting import count_parameters
from .calibration import WhiteningCache, input_covariances
from .config import DROP_AUTO, CompressConfig
from .init import init_group
from .structure import SharingSpec, apply_sharing, merge_model  # noqa: F401  (merge_model re-exported)
from .sublayer_gates import GATED_PROJECTIONS, fit_sublayer_gates


@dataclass
class CompressResult:
    model: torch.nn.Module
    spec: SharingSpec
    plan: dict
    report: dict = field(default_factory=dict)


def build_spec(cfg: CompressConfig, adapter: ModelAdapter, groups: list[list[int]], model, ranks: dict[str, int] | None = None,
               influence: list[float] | None = None) -> SharingSpec:
    """The structure for `groups`. `influence` (block influence per layer) picks each group's
    anchor when cfg.base is "anchor"."""
    projections = list(cfg.shared_projections(adapter))
    layer0 = adapter.decoder_layers(model)[0]
    ranks = dict(ranks) if ranks else {p: cfg.rank_for(p, adapter.kinds[p]) for p in projections}
    for p in projections:
        out_f, in_f = adapter.get_linear(layer0, p).weight.shape
        if ranks[p] > min(out_f, in_f):
            raise ConfigError(f"rank {ranks[p]} for projection '{p}' exceeds what a {out_f}x{in_f} matrix allows (max {min(out_f, in_f)})")
    gates = [p for p in projections if p in GATED_PROJECTIONS] if cfg.gates else []
    scaled = list(projections) if cfg.scale_base else []
    return SharingSpec(groups=groups, projections=projections, ranks=ranks, gates=gates, scaled=scaled,
                       anchors=choose_anchors(cfg.base, groups, influence))


def choose_anchors(base: str, groups: list[list[int]], influence: list[float] | None) -> list[int] | None:
    """Per group, the layer that stays exact: the first, or the one with the highest block
    influence (the layer that changes the residual stream most is the costliest to approximate)."""
    if base == "first":
        return [g[0] for g in groups]
    if base == "anchor":
        if influence is None:
            raise ConfigError("base 'anchor' needs the block influence of each layer (calibration text)")
        return [max(g, key=lambda li: influence[li]) for g in groups]
    return None


def group_savings(model, adapter: ModelAdapter, group_len: int, projections, ranks: dict[str, int], gates, scaled=(),
                  anchored: bool = False) -> int:
    """Unique parameters saved by sharing one group of `group_len` layers (`anchored`: one of
    them is the base itself and has no delta)."""
    layer0 = adapter.decoder_layers(model)[0]
    with_delta = group_len - 1 if anchored else group_len
    saved = 0
    for p in projections:
        out_f, in_f = adapter.get_linear(layer0, p).weight.shape
        saved += (group_len - 1) * out_f * in_f - with_delta * ranks[p] * (out_f + in_f) - (group_len if p in gates else 0)
        saved -= group_len if p in scaled else 0
    return saved


def block_influence(model, calib_ids: torch.Tensor) -> list[float]:
    """ShortGPT's block influence per layer, 1 − E[cos(layer input, layer output)]."""
    from ..baselines.shortgpt import block_influence as measure  # lazy: baselines import delta

    return measure(model, calib_ids)


def _calibration(cfg: CompressConfig, tokenizer, calib_ids):
    if calib_ids is not None:
        return calib_ids
    if tokenizer is None:
        raise ConfigError(f"init '{cfg.init}' / gates / anchor base / budget planning / drop_layers need calibration text: "
                          "pass a tokenizer or calib_ids")
    from ..data.text import calibration_batches

    return calibration_batches(tokenizer, cfg.calib_samples, cfg.calib_seq_len, cfg.seed, cfg.calib_text)


@torch.no_grad()
def fill_group(student, original_weight, adapter: ModelAdapter, spec: SharingSpec, gi: int, cfg: CompressConfig, covs,
               whiten: WhiteningCache | None = None, base_iters: int | None = None) -> dict:
    """Compute and write the values of group `gi` into `student` (structure already applied).
    original_weight(layer, proj) -> the uncompressed (out, in) weight. Gates are left at 1
    (fit_sublayer_gates sets them once every group has its values)."""
    dst_layers = adapter.decoder_layers(student)
    group = spec.groups[gi]
    out = {}
    for proj in spec.projections:
        ws = [original_weight(li, proj) for li in group]
        cs = [covs[(li, proj)] for li in group] if covs is not None else None
        iters = cfg.base_iters if base_iters is None else base_iters
        anchor = group.index(spec.anchors[gi]) if spec.anchors is not None else None
        res = init_group(ws, cs, spec.ranks[proj], cfg.base, cfg.init, iters, cfg.damping, whiten,
                         scale_base=proj in spec.scaled, anchor=anchor)
        dls = [adapter.get_linear(dst_layers[li], proj) for li in group]
        dls[0].weight.copy_(res.base.to(dls[0].weight.dtype))  # the one shared Parameter
        for k, dl in enumerate(dls):
            b, a = res.deltas[k]
            dl.delta_B.copy_(b.to(dl.delta_B.dtype))
            dl.delta_A.copy_(a.to(dl.delta_A.dtype))
            if dl.gate is not None:
                dl.gate.fill_(1.0)
            if dl.base_scale is not None:
                dl.base_scale.fill_(res.alphas[k])
        out[proj] = {"rel_error": [round(e, 4) for e in res.rel_errors]}
        if res.alphas:
            out[proj]["base_scale"] = [round(a, 4) for a in res.alphas]
    return out


def compress(model, cfg: CompressConfig, tokenizer=None, calib_ids: torch.Tensor | None = None, progress: bool = True,
             covs: dict | None = None, influence: list[float] | None = None,
             heldout_ids: torch.Tensor | None = None) -> CompressResult:
    """Return a compressed copy of `model` (which is left untouched) and the plan chosen.
    `covs` may pass precomputed input covariances (calibration.input_covariances over every
    layer) so several configs can be compared on one calibration pass (not with drop_layers:
    removing layers changes the inputs of every later one); `influence` likewise the block
    influence of each of `model`'s layers on this calibration text. `heldout_ids`: the rows
    drop_layers='auto' judges each count on (default: drawn from the tokenizer, heldout_rows)."""
    if cfg.drop_layers == DROP_AUTO:
        return _compress_searching_drop(model, cfg, tokenizer, calib_ids, progress, heldout_ids)
    if cfg.drop_layers:
        if covs is not None:
            raise ValueError("precomputed covs cannot be used with drop_layers (removal changes later layers' inputs)")
        return _compress_after_removal(model, cfg, tokenizer, calib_ids, progress, influence)
    adapter = adapter_for(model.config)
    num_layers = len(adapter.decoder_layers(model))
    projections = cfg.shared_projections(adapter)
    needs_data = cfg.init == "asvd" or cfg.gates or cfg.base in ("alternating", "anchor") or cfg.target_params is not None
    calib = _calibration(cfg, tokenizer, calib_ids) if needs_data else None
    if cfg.base != "anchor":
        influence = None
    elif influence is None:
        influence = block_influence(model, calib)
    original = count_parameters(model)["total"]
    whiten = WhiteningCache(cfg.damping)  # one per call: factors are reused across candidate groups

    if cfg.target_params is not None:
        from .plan import SENSITIVITY_SEQUENCES, kl_to, log_probs, plan_budget

        if covs is None and needs_data:
            covs = input_covariances(model, adapter, range(num_layers), projections, calib, progress=progress)
        candidates, ranks, plan = plan_budget(model, cfg, adapter, covs, calib, progress=progress, whiten=whiten, influence=influence)
        built = {}
        for name, groups in candidates.items():
            if any(groups == b[0].groups for b in built.values()):
                continue
            spec = build_spec(cfg, adapter, groups, model, ranks, influence)
            built[name] = (spec, *_build(model, adapter, spec, cfg, covs, whiten, calib, progress))
        if len(built) > 1:  # judge the whole plans, not sums of single-group costs
            ids = calib[:2 * SENSITIVITY_SEQUENCES]
            ref = log_probs(model, ids)
            plan["candidates"] = {name: {"groups": b[0].groups, "kl": round(kl_to(ref, log_probs(b[1], ids)), 4)}
                                  for name, b in built.items()}
            keep = min(plan["candidates"], key=lambda n: plan["candidates"][n]["kl"])
        else:
            keep = next(iter(built))
        plan["chosen"] = keep
        spec, student, init_report = built[keep]
    else:
        groups = cfg.resolve_groups(num_layers)
        spec = build_spec(cfg, adapter, groups, model, influence=influence)
        layers_used = sorted({li for g in groups for li in g})
        if covs is None and needs_data:
            covs = input_covariances(model, adapter, layers_used, projections, calib, progress=progress)
        plan = {"mode": "explicit", "groups": groups}
        student, init_report = _build(model, adapter, spec, cfg, covs, whiten, calib, progress)
    counts = count_parameters(student)
    plan.update({
        "groups": spec.groups, "anchors": spec.anchors, "projections": spec.projections, "ranks": spec.ranks,
        "gates": spec.gates, "scaled": spec.scaled,
        "original_params": original, "compressed_params": counts["total"], "ratio": counts["total"] / original,
    })
    return CompressResult(student, spec, plan, {"init": init_report, "parameters": counts})


# The held-out draw's seed is the calibration seed plus this: other documents and windows than
# the rows the candidates are fitted on (covariances, gates, anchors), so the fit cannot flatter them
HELDOUT_SEED_OFFSET = 7919


@dataclass
class DropCandidate:
    """One count of drop_layers='auto': its compressed model and how close it is to the original.
    result is None when this count cannot be built (`stopped` says why) and no higher count can."""
    count: int
    result: CompressResult | None
    kl: float | None = None  # KL(original || compressed), nats/token, on held-out calibration text
    kl_calibration: float | None = None  # the same on the fitting rows (kept to show the fit's bias)
    nll: float | None = None  # next-token NLL of the compressed model on the held-out rows, nats/token
    stopped: str | None = None


def heldout_rows(cfg: CompressConfig, tokenizer) -> torch.Tensor:
    """cfg.drop_search_samples sequences of cfg.calib_text drawn apart from the calibration rows
    (seed + HELDOUT_SEED_OFFSET), (n, calib_seq_len)."""
    if tokenizer is None:
        raise ConfigError(f"drop_layers '{DROP_AUTO}' judges each count on held-out text: pass a tokenizer or heldout_ids")
    from ..data.text import calibration_batches

    return calibration_batches(tokenizer, cfg.drop_search_samples, cfg.calib_seq_len, cfg.seed + HELDOUT_SEED_OFFSET,
                               cfg.calib_text)


@torch.no_grad()
def _kl_and_nll(ref: list[torch.Tensor], model, ids: torch.Tensor, chunk: int) -> tuple[float, float]:
    """Mean per-token KL(original || model) and model's next-token NLL over ids (n, T), one chunk
    of rows at a time (a full (n, T, vocab) log-prob tensor per model would cost n·T·vocab·4
    bytes twice)."""
    from .plan import kl_to, log_probs

    kl = nll = 0.0
    for r, i in zip(ref, range(0, len(ids), chunk)):
        rows = ids[i:i + chunk]
        logp = log_probs(model, rows)  # (c, T, vocab)
        kl += kl_to(r, logp) * len(rows)
        nll -= float(logp[:, :-1].gather(-1, rows[:, 1:, None].to(logp.device)).mean()) * len(rows)
    return kl / len(ids), nll / len(ids)


def drop_candidates(model, cfg: CompressConfig, tokenizer=None, calib_ids: torch.Tensor | None = None,
                    heldout_ids: torch.Tensor | None = None, progress: bool = True, counts=None):
    """drop_layers='auto': yield a DropCandidate for 0, 1, 2, ... layers removed first (each the
    budget built with compress), until removal alone would meet it or cfg.drop_search_max
    (`counts`: only these, ascending, for benchmarks).

    Each count is judged on held-out rows (`heldout_ids`, default heldout_rows()): the fitting
    rows flatter every candidate, most those that share more, because deltas and gates are
    fitted on them. On SmolLM2-135M at 25% (bench/results/drop_search.md) held-out rows cut 3
    removed's lead over 8 from 0.21 to 0.06 nats but still keep 3, while evaluation perplexity
    and healing prefer 8: the criterion is only as good as the calibration text is like the
    text the model will see."""
    from .plan import SENSITIVITY_SEQUENCES, log_probs

    calib = _calibration(cfg, tokenizer, calib_ids)
    held = heldout_rows(cfg, tokenizer) if heldout_ids is None else heldout_ids
    fitted = calib[:2 * SENSITIVITY_SEQUENCES]  # the rows the planner judges whole plans on
    chunk = 4
    ref_held = [log_probs(model, held[i:i + chunk]) for i in range(0, len(held), chunk)]  # (≤4, T, vocab) each
    ref_fitted = [log_probs(model, fitted[i:i + chunk]) for i in range(0, len(fitted), chunk)]
    influence = block_influence(model, calib)  # of the original model: which layers go first, for every count
    num_layers = len(adapter_for(model.config).decoder_layers(model))
    most = num_layers - 2 if cfg.drop_search_max is None else min(cfg.drop_search_max, num_layers - 2)
    for count in tqdm(range(most + 1) if counts is None else sorted(counts), desc="drop count", disable=not progress):
        try:
            res = compress(model, dataclasses.replace(cfg, drop_layers=count), calib_ids=calib, progress=progress,
                           influence=influence)
        except ConfigError as e:
            if count == 0:
                raise
            yield DropCandidate(count, None, stopped=f"{count}: {e}")  # removal alone meets the budget: no higher count either
            return
        kl, nll = _kl_and_nll(ref_held, res.model, held, chunk)
        yield DropCandidate(count, res, kl=round(kl, 4), kl_calibration=round(_kl_and_nll(ref_fitted, res.model, fitted, chunk)[0], 4),
                            nll=round(nll, 4))


def _compress_searching_drop(model, cfg: CompressConfig, tokenizer, calib_ids, progress: bool,
                             heldout_ids: torch.Tensor | None = None) -> CompressResult:
    """drop_layers='auto': keep the count whose model is closest to the original on held-out
    text (drop_candidates). Every count is built because quality is not monotone in it
    (bench/results/drop_sweep.md: on SmolLM2-135M at 12%, 3 is best and 1, 2, 4 are worse than 0).
    Costs one compress() per count."""
    kls, kls_fit, nlls, stop, best = {}, {}, {}, None, None
    for c in drop_candidates(model, cfg, tokenizer, calib_ids, heldout_ids, progress):
        if c.result is None:
            stop = c.stopped
            break
        kls[c.count], kls_fit[c.count], nlls[c.count] = c.kl, c.kl_calibration, c.nll
        if best is None or c.kl < best.kl:
            best = c
    n = cfg.drop_search_samples if heldout_ids is None else len(heldout_ids)
    best.result.plan["drop_search"] = {
        "metric": f"KL(original || compressed) nats/token on {n} held-out sequences of calibration text", "kl": kls,
        "kl_calibration": kls_fit, "nll": nlls, "chosen": best.count,
        "stopped": stop or "at the last count (drop_search_max or all but two layers)"}
    return best.result


def _compress_after_removal(model, cfg: CompressConfig, tokenizer, calib_ids, progress: bool,
                            influence: list[float] | None = None) -> CompressResult:
    """Remove cfg.drop_layers whole layers (lowest block influence, never one of explicit
    groups'), then share in what is left. Explicit groups count the original layers; the
    result's spec counts the compressed model's and maps them back (spec.source_layers).
    `influence` may pass the original model's block influence on this calibration text."""
    from ..baselines.common import copy_model, remove_layers  # lazy: baselines import delta

    adapter = adapter_for(model.config)
    num_layers = len(adapter.decoder_layers(model))
    calib = _calibration(cfg, tokenizer, calib_ids)
    original = count_parameters(model)["total"]
    explicit = cfg.resolve_groups(num_layers) if cfg.target_params is None else []
    grouped = {li for g in explicit for li in g}
    influence = block_influence(model, calib) if influence is None else influence
    candidates = sorted((li for li in range(num_layers) if li not in grouped), key=lambda li: influence[li])
    most = len(candidates) if grouped else num_layers - 2  # budget mode: two layers must stay to share
    if cfg.drop_layers > most:
        raise ConfigError(f"drop_layers {cfg.drop_layers} is too many: at most {most} of the {num_layers} layers can go "
                          + ("(the others are in sharing groups)" if grouped else "(two must stay to share)"))
    drop = sorted(candidates[:cfg.drop_layers])
    kept_layers = sorted(set(range(num_layers)) - set(drop))
    reduced = remove_layers(copy_model(model), drop)
    kept = count_parameters(reduced)["total"]
    if cfg.target_params is not None:
        fraction = cfg.target_params * original / kept  # of the reduced model, for the sharing plan
        if fraction >= 1.0:
            raise ConfigError(f"removing {cfg.drop_layers} layers alone keeps {kept / original:.3f} of the parameters, already "
                              f"within target_params {cfg.target_params}: lower drop_layers")
        inner = dataclasses.replace(cfg, drop_layers=0, target_params=fraction)
    else:
        renumber = {li: j for j, li in enumerate(kept_layers)}
        inner = dataclasses.replace(cfg, drop_layers=0, layer_range=None, groups=[[renumber[li] for li in g] for g in explicit])
    res = compress(reduced, inner, calib_ids=calib, progress=progress)
    res.spec.source_layers = kept_layers  # the same object the model carries
    res.plan.update({
        "target_params": cfg.target_params, "sharing_target_params": inner.target_params,
        "removed_layers": drop, "removed_block_influence": [round(influence[li], 5) for li in drop],
        "source_layers": kept_layers, "original_params": original, "ratio": res.plan["compressed_params"] / original,
    })
    return res


def _build(model, adapter: ModelAdapter, spec: SharingSpec, cfg: CompressConfig, covs, whiten, calib, progress: bool):
    """A compressed copy of `model` with `spec`'s structure and initial values: (student, init report)."""
    student = copy.deepcopy(model)
    apply_sharing(student, spec, adapter)
    student.edgedelta_spec = spec
    src_layers = adapter.decoder_layers(model)
    report = {}
    for gi in tqdm(range(len(spec.groups)), desc="init groups", disable=not progress, leave=False):
        report[f"g{gi}:{spec.groups[gi]}"] = fill_group(
            student, lambda li, p: adapter.get_linear(src_layers[li], p).weight, adapter, spec, gi, cfg, covs, whiten)
    if spec.gates:
        report["sublayer_gates"] = {k: round(g, 4) for k, g in fit_sublayer_gates(student, src_layers, adapter, spec, calib).items()}
    return student, report


def format_drop_search(search: dict) -> str:
    """One line for plan['drop_search'] (drop_layers='auto'): each count's KL and the count kept."""
    return (f"layers removed first, searched (held-out KL to the original): "
            + ", ".join(f"{k}: {v:.4f}" for k, v in search["kl"].items()) + f"; kept {search['chosen']}")


def format_plan(plan: dict) -> str:
    """A few human-readable lines describing the plan (layers in the original model's numbering)."""
    anchors = plan.get("anchors") or [None] * len(plan["groups"])
    src = plan.get("source_layers")
    orig = (lambda li: src[li]) if src else (lambda li: li)
    lines = [f"removed layers ({len(plan['removed_layers'])}): {', '.join(map(str, plan['removed_layers']))}"] if plan.get("removed_layers") else []
    lines += [f"groups ({len(plan['groups'])}): " + " ".join(
                 "[" + ",".join(f"{orig(li)}*" if li == a else str(orig(li)) for li in g) + "]" for g, a in zip(plan["groups"], anchors))
             + ("  (* = anchor: exact, no delta)" if plan.get("anchors") else ""),
             f"shared projections: {', '.join(plan['projections'])}; ranks: " + ", ".join(f"{k}={v}" for k, v in plan["ranks"].items()),
             f"gates: {', '.join(plan['gates']) or 'none'}",
             f"unique parameters: {plan['compressed_params']:,} of {plan['original_params']:,} ({plan['ratio']:.2%})"]
    if "drop_search" in plan:
        lines.append(format_drop_search(plan["drop_search"]))
    if "sensitivity" in plan:
        worst = sorted(plan["sensitivity"].items(), key=lambda kv: -kv[1])[:3]
        lines.append("most sensitive candidates (KL, nats/token): "
                     + ", ".join(f"{','.join(str(orig(int(li))) for li in k.split(','))} {v:.3f}" for k, v in worst))
    return "\n".join(lines)
