"""export_onnx: a model directory (plain or edgedelta-compressed) → a validated ONNX artifact.

    out/
      model.onnx, model.onnx.data   decoder with KV cache; every distinct weight stored once
      config.json                   the transformers config (no edgedelta section: the
                                    artifact is a plain optimum-loadable decoder)
      generation_config.json, tokenizer files
      genai_config.json             the same folder as an onnxruntime-genai model (genai_config.py)
      manifest.json                 ExportConfig, sharing spec / CompressConfig, parameter and
                                    byte accounting, audit, parity report, versions, sha256s

Built in a temporary folder and renamed into place only after the checker, the audit and
the parity checks pass; the input directory and model are never modified."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import onnx

from edgedelta.delta.accounting import DTYPE_BYTES, count_parameters
from edgedelta.delta.structure import get_spec
from edgedelta.errors import ConfigError, EdgeDeltaError, IntegrityError, ModelLoadError, ParityError
from edgedelta.fsutil import atomic_dir, check_output_path
from edgedelta.manifest import read_manifest, write_manifest
from edgedelta.models.adapters import adapter_for

from .artifact_audit import MODEL_FILE, audit, audit_problems
from .calibration import calibration_for, cpu_has_bf16_matmul
from .config import ExportConfig, session_config
from .arch_facts import ArchFacts, gqa_unsupported
from .decoder import DecoderGraph
from .genai_config import FILE as GENAI_FILE
from .genai_config import genai_config
from .graph import GraphBuilder
from .prepack import lift_shared_weights
from .scale_tuning import resolve_tune_steps, tune_scales, tuning_windows
from .weights import ModelWeights, WeightCollector, quantize_base_weights

ARTIFACT_FORMAT = "edgedelta-onnx"
# Bumped whenever the graph emitted for the same ExportConfig changes, and recorded in the
# manifest, so a cached artifact from an older exporter can be told apart (2: fp32 weights
# with several readers lifted to (1, K, N), RMSNorm as Pow so ORT fuses it; 3: the attention
# scale on the score MatMul's output, folded by ORT into its alpha; 4: default opset 23 with
# ONNX RotaryEmbedding; 5: residual Adds fused into the norms, SkipSimplifiedLayerNormalization;
# 6: an additive attention mask built once instead of a Where per layer; 7: shared bases stored
# (1, N, K) and read by FusedMatMul with transB, ORT's faster unpacked kernel; 8: for arm64
# the tied embedding stored (1, hidden, vocab), the LM head a plain MatMul; 9: q/k/v and gate/up
# fused into one MatMul each (a group's fused base one initializer, its deltas one A and one
# block-diagonal B), GroupQueryAttention with an in-place KV cache, and in quantized exports the
# embedding table quantized once, read by a dequantizing Gather and the tied LM head's MatMulNBits;
# 10: an optional logits_to_keep input, so a prefill runs the LM head on its last position only;
# 11: GroupQueryAttention's cos/sin tables computed in the graph from inv_freq (folded by ORT at load);
# 12: with v at its own bits, q and k fused into one MatMulNBits, v a second; 13: fp16 graphs
# use GroupQueryAttention too (the CUDA provider's kernel for it is fp16/bf16 only), its mask
# bias in the activation dtype).
GRAPH_REVISION = 13
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
class ExportError(EdgeDeltaError):
    """The exported graph failed a structural check (checker or sharing audit)."""


def use_gqa(facts: ArchFacts, cfg: ExportConfig) -> bool:
    """Whether the graph uses GroupQueryAttention: 'auto' where the model allows it; 'gqa' on a
    model that does not is a ConfigError naming the reason."""
    reason = gqa_unsupported(facts)
    if cfg.attention == "gqa" and reason:
        raise ConfigError(f"attention 'gqa' is not possible for this model: {reason}; use attention 'plain' or 'auto'")
    return cfg.attention != "plain" and reason is None


def build_graph(model, cfg: ExportConfig, calibration=None, progress: bool = False,
                prequantized=None) -> tuple[GraphBuilder, ModelWeights, ArchFacts]:
    """Emit `model` (read only) as an ONNX decoder graph into a GraphBuilder. prequantized:
    id(Parameter) -> (QuantizedWeight, method) taken as they are (the scale-tuned weights)."""
    adapter = adapter_for(model.config)
    builder = GraphBuilder("edgedelta_decoder", cfg.opset)
    weights = WeightCollector(model, adapter, cfg, builder, calibration, progress, prequantized).collect()
    facts = ArchFacts.from_model(model, adapter)
    DecoderGraph(builder, facts, weights, cfg.dtype, cfg.accuracy_level, gqa=use_gqa(facts, cfg)).build()
    if cfg.dtype == "fp32":
        lift_shared_weights(builder, cfg.cpu_arch)
    return builder, weights, facts


def _load(model_dir):
    from edgedelta.loading import load_model
    from edgedelta.models.registry import is_builtin_name

    if not is_builtin_name(str(model_dir)):  # 'default' or a built-in name: load_model resolves it
        path = Path(str(model_dir)).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model directory '{model_dir}' does not exist")
        if path.is_file():
            raise ModelLoadError(f"'{model_dir}' is a file, not a model directory")
    return load_model(str(model_dir))


def _source_facts(path: Path) -> dict[str, Any]:
    """What the source directory's manifest says about how it was made (if it has one)."""
    try:
        m = read_manifest(path)
    except (ModelLoadError, IntegrityError):
        return {}
    keep = ("compress_config", "config", "plan", "source", "sharing", "parameters", "distill_config")
    return {k: m[k] for k in keep if k in m} | {"format": m.get("format")}


def _copy_side_files(src: Path, dst: Path, model, tokenizer) -> list[str]:
    """config.json (plain transformers), generation_config.json, tokenizer files."""
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    cfg.pop("edgedelta", None)
    cfg.pop("_name_or_path", None)  # a local path: same model from another folder must give the same bytes (source is in the manifest)
    cfg["use_cache"] = True
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(dst)
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    for f in copied:
        shutil.copyfile(src / f, dst / f)
    if not copied and tokenizer is not None:
        tokenizer.save_pretrained(dst)
        (dst / "tokenizer.model").unlink(missing_ok=True)
    return copied


def symmetric_candidates(cfg: ExportConfig, has_tokenizer: bool) -> tuple[bool, ...]:
    """The zero-point forms an export tries, in order. symmetric=None (auto) on a quantized
    export whose quality gate can run (validation on, a tokenizer to read held-out text with):
    symmetric blocks (MatMulNBits reads no zero points: faster int4 decode, measured in
    bench/results/zero_points.md) unless the artifact misses the gate, then uint zero points.
    Where nothing can judge the symmetric form: zero points, the finer grid."""
    if cfg.symmetric is not None or cfg.quantize == "none":  # as given (unquantized: no blocks, nothing to choose)
        return (cfg.symmetric,)
    return (True, False) if cfg.validate and has_tokenizer else (False,)


def _tuned_weights(model, cfg: ExportConfig, calibration, tune_ids, progress, say) -> tuple[dict, dict]:
    """The weights quantized as the collector would, then their block scales tuned end to end
    (scale_tuning.py): (id(Parameter) -> (QuantizedWeight, method), the tuning's summary)."""
    pre = quantize_base_weights(model, adapter_for(model.config), cfg, calibration)
    tuned, summary = tune_scales(model, {i: q for i, (q, _) in pre.items()}, tune_ids, cfg.tune_steps,
                                 bf16=cpu_has_bf16_matmul(), progress=progress is not None)
    say(f"scale tuning: KL {summary['kl_first']:.4f} -> {summary['kl_last']:.4f} ({summary['seconds']:.0f} s)")
    return {i: (tuned[i], method) for i, (_, method) in pre.items()}, summary


def _build_and_check(model, tokenizer, cfg: ExportConfig, calibration, tmp: Path, progress, say, tune_ids=None):
    """Build the graph into `tmp` and run the checker, the sharing audit and (cfg.validate) the
    parity checks and quality gate; returns (weights, facts, gqa, audit report, the weights laid
    out for cfg.cpu_arch, parity report, {phase: seconds}, scale tuning summary or None): graph
    (weights collected and quantized, calibration passes and scale tuning included), write,
    check (checker and audit), parity and quality_gate."""
    t1 = time.perf_counter()
    prequantized, tuning = _tuned_weights(model, cfg, calibration, tune_ids, progress, say) if cfg.tune_steps else (None, None)
    builder, weights, facts = build_graph(model, cfg, calibration, progress=progress is not None, prequantized=prequantized)
    seconds = {"graph": time.perf_counter() - t1}
    gqa = use_gqa(facts, cfg)
    builder.save(tmp, MODEL_FILE, metadata={"edgedelta.format": ARTIFACT_FORMAT,
                                            "edgedelta.ort_session_config": json.dumps(session_config(cfg), sort_keys=True)})
    del builder
    seconds["write"] = time.perf_counter() - t1 - seconds["graph"]
    say(f"graph written ({time.perf_counter() - t1:.1f} s)")
    try:
        onnx.checker.check_model(str(tmp / MODEL_FILE), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"ONNX checker rejected the exported graph: {str(e).splitlines()[0]}") from None
    report = audit(tmp)
    # weights whose layout follows cfg.cpu_arch (prepack.py): lifted, and read by a MatMul
    cpu_laid_out = [r["name"] for r in report["initializers"] if len(r["shape"]) == 3 and r["shape"][0] == 1
                    and set(r["consumer_ops"]) & {"MatMul", "FusedMatMul"}]
    problems = audit_problems(report)
    if problems:
        raise ExportError("sharing audit failed: " + "; ".join(problems))
    seconds["check"] = time.perf_counter() - t1 - seconds["graph"] - seconds["write"]
    parity = None
    if cfg.validate:
        from .validate import check_parity

        parity = check_parity(model, tmp / MODEL_FILE, facts, cfg, weights.dequantized, tokenizer=tokenizer, seconds=seconds)
        say("parity: " + ", ".join(f"{k} {v.get('max_abs_diff', 0):.2e}" for k, v in parity.items()))
    return weights, facts, gqa, report, cpu_laid_out, parity, seconds, tuning


def export_onnx(model_dir, cfg: ExportConfig | None = None, out_dir=None, *, force: bool = False, progress=None) -> Path:
    """Export `model_dir` ('default', an HF directory or an edgedelta compressed directory)
    to an ONNX artifact in `out_dir`; validates it and returns the path.

    Raises OutputExistsError (out exists, no force), ModelLoadError (bad input),
    ParityError / ExportError (failed validation: nothing is left in out_dir)."""
    cfg = cfg_in = cfg or ExportConfig()
    if out_dir is None:
        raise ModelLoadError("an output directory is required")
    check_output_path(out_dir, force)  # fail before the (slow) model load
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    loaded = _load(model_dir)
    model = loaded.model.eval()
    t_load = time.perf_counter() - t0
    say(f"loaded {loaded.path} ({t_load:.1f} s)")
    with atomic_dir(out_dir, force=force) as tmp:
        t1 = time.perf_counter()
        calibration = calibration_for(model, loaded.tokenizer, cfg, progress=progress is not None)
        steps, untuned_why = resolve_tune_steps(cfg, model, loaded.tokenizer is not None)  # after calibration: its Grams are held
        if untuned_why and cfg.quantize == "int4":
            say(f"no scale tuning: {untuned_why}")
        cfg = dataclasses.replace(cfg, tune_steps=steps)
        tune_ids = tuning_windows(loaded.tokenizer, cfg) if cfg.tune_steps else None
        tried: list[dict] = []
        for symmetric in symmetric_candidates(cfg, loaded.tokenizer is not None):
            cfg = dataclasses.replace(cfg, symmetric=symmetric)
            try:
                built = _build_and_check(model, loaded.tokenizer, cfg, calibration, tmp, progress, say, tune_ids)
                break
            except ParityError as e:  # auto: the symmetric form missed the quality gate, uint zero points next
                if not (symmetric and cfg_in.symmetric is None and getattr(e, "gate", None)):
                    raise
                say(f"symmetric blocks miss the quality gate ({e}); exporting with zero points")
                tried.append({"symmetric": True, "quality_gate": e.gate})
                for f in tmp.iterdir():
                    if f.is_dir():
                        shutil.rmtree(f)
                    else:
                        f.unlink()
        weights, facts, gqa, report, cpu_laid_out, parity, seconds, tuning = built
        t_build = time.perf_counter() - t1
        side = _copy_side_files(Path(loaded.path), tmp, model, loaded.tokenizer)
        gen_cfg = json.loads((tmp / "generation_config.json").read_text()) if (tmp / "generation_config.json").is_file() else {}
        cfg_json = json.loads((tmp / "config.json").read_text())
        (tmp / GENAI_FILE).write_text(json.dumps(genai_config(facts, cfg_json, gen_cfg, gqa), indent=2, sort_keys=True) + "\n")
        counts = count_parameters(model)
        spec = get_spec(model)
        unique_bytes = int(counts["total"] * DTYPE_BYTES[cfg.dtype])
        src_facts = _source_facts(Path(loaded.path))
        facts_out = {
            "export_config": cfg.to_dict(),  # symmetric as exported (auto resolved)
            # symmetric=None (auto): the forms tried before this one, with the quality gate that rejected each
            "symmetric_choice": None if cfg.quantize == "none" else
            {"mode": "auto" if cfg_in.symmetric is None else "set", "chosen": cfg.symmetric, "rejected": tried},
            "graph_revision": GRAPH_REVISION,
            "compress_config": src_facts.get("compress_config"),  # how the source was compressed (None: plain model)
            "source": {**loaded.source, "path": str(Path(loaded.path).resolve()), "manifest": src_facts},
            "sharing": spec.to_dict() if spec else None,
            "aliases": weights.aliases,  # parameters stored under an identical tensor's initializer
            "architecture": {"model_type": model.config.model_type, "num_layers": facts.num_layers, "hidden": facts.hidden,
                             "heads": facts.heads, "kv_heads": facts.kv_heads, "head_dim": facts.head_dim, "vocab": facts.vocab,
                             # per layer: W for a sliding-window layer (attends to its W latest positions), null for global
                             "sliding_windows": list(facts.sliding_windows)},
            # logits_to_keep: optional, default 0 (every position); K > 0 gives the last K positions' logits
            "io": {"inputs": ["input_ids", "attention_mask", "position_ids", "past_key_values.{i}.key|value", "logits_to_keep"],
                   "outputs": ["logits", "present.{i}.key|value"],
                   "kv_dtype": "float16" if cfg.dtype == "fp16" else "float32",
                   # in_place: one (B, kv_heads, capacity, head_dim) buffer may be bound to both past and
                   # present; step t writes slots [T-S, T) (T = attention_mask's length) and reads [0, T).
                   # concat: present = past + new, (B, kv_heads, T, head_dim)
                   "kv_update": "in_place" if gqa else "concat",
                   "attention": "GroupQueryAttention" if gqa else "plain",
                   # GroupQueryAttention rotates by cache slot (= position when unpadded; padding is masked)
                   "position_ids": "unused" if gqa else "rotary positions"},
            "layouts": {"projection": "(in, out) for MatMul", "delta_A": "(in, r) = Aᵀ", "delta_B": "(r, out) = Bᵀ",
                        "quantized": "MatMulNBits (out, in/block, block*bits/8) uint8 + scales + zero_points (none when symmetric)",
                        "float_zero_points": "'{w}.offsets' (out, table blocks, table block) uint8 + '{w}.offsets.scales': the "
                                             "8-bit (out, in/block) offset table, a MatMulNBits over the input's block sums "
                                             "added to the symmetric product" if cfg.float_zero_points else None,
                        "tied_embedding": "(vocab, hidden), (1, vocab, hidden) in fp32, read by Gather and by FusedMatMul/Gemm with transB=1; "
                                          "(1, hidden, vocab) read by Gather on axis 2 and by MatMul where cpu_arch is arm64",
                        "shared_fp32": "(1, ...) leading unit axis on every fp32 weight read by several nodes (kept out of ORT prepacking); "
                                       "(1, out, in) read by FusedMatMul with transB=1 where only MatMuls would read it",
                        "cpu_arch": cfg.cpu_arch if cpu_laid_out else None},  # None: no layout depends on the CPU
            "parameters": {**counts, "unique_bytes_at_dtype": unique_bytes,
                           "block_diagonal_zeros": weights.block_diagonal_zeros},
            "bytes": {"data_file": report["data_file_bytes"], "model_file": report["model_file_bytes"],
                      "initializers": report["initializer_bytes"],
                      "data_file_over_unique_param_bytes": report["data_file_bytes"] / unique_bytes if unique_bytes else None},
            "audit": {k: v for k, v in report.items() if k != "initializers"},
            "parity": parity,
            "ort_session_config": session_config(cfg),
            "tokenizer_files": side,
            # data-aware quantization's calibration: its text, tokens and forward passes (None: none ran)
            "calibration": calibration.summary() if calibration is not None else None,
            # end-to-end block-scale tuning (scale_tuning.py): steps, tokens, KL before and after (None: none ran)
            "scale_tuning": tuning,
            # tune_steps as given (auto: None) and, where auto left tuning off, why
            "scale_tuning_choice": None if cfg.quantize == "none" else
            {"mode": "auto" if cfg_in.tune_steps is None else "set", "steps": cfg.tune_steps, "off_because": untuned_why},
            # build_and_check: the accepted form's phases below, plus any form the quality gate rejected;
            # calibration_passes: the forward passes of every form built (inside their "graph" phases)
            "timing_s": {"load": round(t_load, 2), "build_and_check": round(t_build, 2),
                         "phases": {k: round(v, 2) for k, v in seconds.items()},
                         "calibration_passes": round(calibration.seconds, 2) if calibration is not None else 0.0,
                         "total": round(time.perf_counter() - t0, 2)},
        }
        write_manifest(tmp, ARTIFACT_FORMAT, facts_out)
    return Path(out_dir)
