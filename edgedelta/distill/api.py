"""`distill(student, DistillConfig, out_dir)`: recover a compressed model by distilling from
the original model it was made from.

Folders: the result goes to `out_dir` (a compressed-model directory, written atomically,
with train_log.jsonl, loss_curve.png and the DistillConfig in its manifest). While training,
checkpoints live in the sibling run folder `<out_dir>.run/`, which --resume continues and
which is removed once the output is complete. Every bad input is refused before anything
is written."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.text import training_texts
from ..delta.structure import SharingSpec, get_spec
from ..errors import ConfigError, EdgeDeltaError, ModelLoadError
from ..fsutil import check_output_path
from ..manifest import read_manifest
from ..models.adapters import adapter_for
from .checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, load_optimizer_tensors,
                         optimizer_tensors, save_checkpoint)
from .config import DistillConfig
from .data import TrainData, fingerprint
from .distributed import DistContext, setup
from .hybrid import HybridModel
from .logs import JsonlLog, loss_curve_png
from .reconstruct import reconstruct_groups
from .teacher_cache import TopKCache, teacher_fingerprint
from .trainable import merge_dense_lora, merge_lora, select_trainable
from .trainer import LoopState, TrainingInterrupted, train_loop

RUN_SUFFIX = ".run"
_RESERVED = {"format", "manifest_version", "versions", "files", "sharing", "parameters", "distill"}


@dataclass
class DistillResult:
    out_dir: Path | None
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    final_loss: float | None
    trainable_params: int = 0  # elements trained (LoRA factors counted before their merge)
    reconstruction: list[dict] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir) if self.out_dir else None, "steps": self.steps, "tokens": self.tokens,
                "seconds": round(self.seconds, 1), "tokens_per_s": round(self.tokens_per_s, 1),
                "final_loss": self.final_loss, "trainable_params": self.trainable_params, "reconstruction": self.reconstruction}


def run_dir_for(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + RUN_SUFFIX)


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


def _load_student(student) -> tuple[nn.Module, Any, dict, Path | None]:
    """(model, tokenizer, manifest facts, path) from a directory, LoadedModel or module."""
    if isinstance(student, (str, Path)):
        from ..delta.storage import load_compressed

        path = Path(student)
        manifest = read_manifest(path)
        lm = load_compressed(path)
        return lm.model, lm.tokenizer, manifest, path
    from ..models.loading import LoadedModel

    if isinstance(student, LoadedModel):
        return student.model, student.tokenizer, {"source": student.source.get("source", student.source)}, None
    return student, None, {"source": {}}, None


def distill(student, config: DistillConfig, out_dir=None, *, teacher: nn.Module | None = None, tokenizer=None,
            train_rows: torch.Tensor | None = None, resume: bool = False, force: bool = False, progress: bool = True,
            stop_after: int | None = None, run_dir=None, device: str = "auto") -> DistillResult:
    """Recover `student` (a compressed dir, LoadedModel or compressed module) by per-group
    reconstruction (if config.recon_tokens) and then logit distillation with progressive
    module replacement. Writes `out_dir` (None: train in place, write nothing but the run
    folder, which then must be given). `train_rows` (n, seq_len) token ids replace
    config.data (tests). The student module is trained in place."""
    cfg = config
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_output_path(out, force)
    run = Path(run_dir) if run_dir is not None else (run_dir_for(out) if out is not None else None)
    ckpt = None
    if run is not None and resume:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise CheckpointError(f"nothing to resume: no checkpoint in '{run}'")
    elif run is not None and run.exists():
        if latest_checkpoint(run) is not None and not force:
            raise ConfigError(f"run folder '{run}' holds a checkpoint of an earlier run: pass --resume to continue it (or --force to start over)")
        shutil.rmtree(run)  # no checkpoint in it (a run that failed before its first one) or --force
    ck_state = ck_params = ck_opt = ck_log = None
    if ckpt is not None:  # read and compare before any heavy work
        ck_state, ck_params, ck_opt, ck_log = load_checkpoint(ckpt)
        try:
            old = DistillConfig.from_dict(ck_state["config"])
        except (KeyError, EdgeDeltaError) as e:
            raise CheckpointError(f"checkpoint '{ckpt}' has no valid config: {e}") from None
        diffs = old.differences(cfg)
        if diffs:
            raise ConfigError(f"--resume with a config that differs from the checkpoint's: {'; '.join(diffs)}")

    model, tok, manifest, path = _load_student(student)
    tokenizer = tokenizer or tok
    spec = get_spec(model)
    if spec is None:
        raise ModelLoadError("the student is not a compressed model (no edgedelta sharing spec)")
    source = manifest.get("source", {})
    if teacher is None:
        from ..models.loading import load_model

        teacher = load_model(teacher_spec_from(source)).model
    # unshared layers differ from the teacher's once a run trained a LoRA on them: then the
    # teacher check compares sizes and embedding only, and no teacher prefix is reused
    adapted = bool(manifest.get("layers_adapted")) or "layer-lora" in cfg.trainable
    check_teacher(model, teacher, spec, compare_layers=not manifest.get("layers_adapted"))

    if train_rows is None:
        if tokenizer is None:
            raise ConfigError("no tokenizer to prepare the training text")
        data = TrainData.from_texts(tokenizer, training_texts(cfg.data), cfg.seq_len, cfg.seed)
    else:
        data = TrainData(train_rows, cfg.seed)
        if data.seq_len != cfg.seq_len:
            raise ConfigError(f"train_rows have {data.seq_len} tokens per row, config.seq_len is {cfg.seq_len}")
    data_fp = fingerprint(data.rows)
    if ck_state is not None and ck_state.get("data_fingerprint") != data_fp:
        raise ConfigError(f"--resume with different training data: fingerprint {data_fp} vs {ck_state.get('data_fingerprint')} in the checkpoint")

    ctx = setup(device)
    teacher.to(ctx.device).eval().requires_grad_(False)
    model.to(ctx.device).train()
    trainable = select_trainable(model, spec, cfg.trainable, cfg.lora_rank, cfg.seed)
    names = [tp.name for tp in trainable]
    params = [tp.param for tp in trainable]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    hybrid = HybridModel.for_spec(model, teacher, spec, adapted)
    log = JsonlLog(run / "train_log.jsonl" if (run is not None and ctx.is_main) else None, ck_log)
    state = LoopState()
    recon: list[dict] = []

    def save(st: LoopState) -> None:
        if run is None:
            return
        st_json = {"step": st.step, "tokens": st.tokens, "seconds": st.seconds, "config": cfg.to_dict(),
                   "data_fingerprint": data_fp, "reconstruction": recon, "source": source, "world": ctx.world}
        save_checkpoint(run, st.step, {tp.name: tp.param for tp in trainable}, optimizer_tensors(optimizer, names),
                        st_json, log.lines, cfg.keep_checkpoints)

    if ck_state is not None:
        _restore(trainable, ck_params, ckpt)
        load_optimizer_tensors(optimizer, names, ck_opt)
        state = LoopState(ck_state["step"], ck_state["tokens"], ck_state.get("seconds", 0.0))
        recon = ck_state.get("reconstruction", [])
    elif cfg.recon_tokens > 0:
        n = max(1, -(-cfg.recon_tokens // cfg.seq_len))
        g = torch.Generator().manual_seed(cfg.seed + 1)
        rows = data.rows[torch.randperm(data.num_rows, generator=g)[:n]]
        t0 = time.time()
        recon = reconstruct_groups(model, teacher, spec, trainable, rows, lr=cfg.recon_lr, epochs=cfg.recon_epochs,
                                   batch=cfg.recon_batch, inputs=cfg.recon_inputs, betas=cfg.betas, clip=cfg.clip,
                                   device=ctx.device, autocast=ctx.use_autocast, progress=progress and ctx.is_main)
        state.extra["recon_seconds"] = time.time() - t0
        if ctx.is_main:
            save(state)  # the reconstruction is not repeated on --resume

    cache = None
    if cfg.teacher_cache is not None:
        cache = TopKCache(cfg.teacher_cache, teacher_fingerprint(teacher), data_fp, cfg.teacher_topk)
        if ctx.is_main:
            cache.ensure(teacher, data.rows, data.rows_used(cfg.total_steps, cfg.batch_size), cfg.recon_batch, ctx.device,
                         ctx.use_autocast, progress)
        ctx.barrier()
        if not ctx.is_main:
            cache = TopKCache(cfg.teacher_cache, teacher_fingerprint(teacher), data_fp, cfg.teacher_topk)
    try:
        state = train_loop(hybrid, teacher, params, optimizer, data, cfg, ctx, state, log, save,
                           progress=progress, stop_after=stop_after, topk_cache=cache)
    except TrainingInterrupted as e:
        where = f" in '{run}'" if run is not None else " (no run folder: nothing saved)"
        raise TrainingInterrupted(str(e).replace("checkpoint saved", "checkpoint saved" + where)) from None
    final = log.lines[-1]["loss"] if log.lines else None
    result = DistillResult(out, state.step, state.tokens, state.seconds, state.tokens / max(state.seconds, 1e-9) if state.step else 0.0,
                           final, sum(p.numel() for p in params), recon, log.lines)
    merge_lora(model, spec)
    merge_dense_lora(model)
    model.eval()
    bad = [tp.name for tp in trainable if not torch.isfinite(tp.param).all()]
    if bad:  # never write a model of NaNs as if it were a result
        raise EdgeDeltaError(f"training diverged: {len(bad)} trained tensor(s) are not finite (e.g. '{bad[0]}'); "
                             f"lower --lr or check the loss weights; nothing was written")
    if out is not None and ctx.is_main:
        facts = {k: v for k, v in manifest.items() if k not in _RESERVED}
        facts["source"] = source
        facts["layers_adapted"] = adapted
        facts["distill"] = {"config": cfg.to_dict(), "result": result.to_dict(), "student_input": str(path) if path else None,
                            "data": cfg.data if train_rows is None else "train_rows", "data_fingerprint": data_fp,
                            "processes": ctx.world, "device": str(ctx.device)}
        from ..delta.storage import save_compressed

        extra = {"train_log.jsonl": log.text().encode(), "loss_curve.png": loss_curve_png(log.lines)}
        save_compressed(model, out, tokenizer=tokenizer, manifest_facts=facts, force=force, extra_files=extra)
        if run is not None:
            shutil.rmtree(run, ignore_errors=True)
    ctx.barrier()
    return result


@torch.no_grad()
def _restore(trainable, tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    missing = [tp.name for tp in trainable if tp.name not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint '{ckpt}' lacks parameter(s) {missing[:3]} of this run")
    for tp in trainable:
        src = tensors[tp.name]
        if src.shape != tp.param.shape:
            raise CheckpointError(f"checkpoint '{ckpt}': '{tp.name}' has shape {tuple(src.shape)}, expected {tuple(tp.param.shape)}")
        tp.param.copy_(src.to(tp.param.device, tp.param.dtype))
