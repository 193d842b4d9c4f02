"""The steps of `distill()` (api.py), each short: prepare (student, teacher, data, trainable
tensors, optimizer), start (restore a checkpoint, or reconstruct each group once), train (the
loop, with the teacher's top-k cache when configured) and finish (merge the LoRAs, refuse a
diverged model, write the output)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.text import training_texts
from ..delta.lora import merge_lora
from ..delta.storage import load_compressed, save_compressed
from ..delta.structure import SharingSpec, get_spec
from ..errors import ConfigError, EdgeDeltaError, ModelLoadError
from ..manifest import read_manifest
from ..loading import load_model
from ..models.loaded import LoadedModel
from .checkpoint import CheckpointError, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from .config import DistillConfig
from .data import TrainData, fingerprint
from .distributed import DistContext, setup
from .hybrid import HybridModel
from .logs import JsonlLog, loss_curve_png
from .reconstruct import reconstruct_groups
from .run_folder import Checkpoint
from .teacher import check_teacher, teacher_spec_from
from .teacher_cache import TopKCache, teacher_fingerprint
from .trainable import TrainableParam, select_trainable
from .trainer import LoopState, TrainingInterrupted, train_loop

# manifest entries of the input that a distilled output writes afresh
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
                "final_loss": self.final_loss, "trainable_params": self.trainable_params, "reconstruction": self.reconstruction,
                "rollbacks": self.rollbacks}

    @property
    def rollbacks(self) -> list[dict]:
        """The spike guard's rollbacks, from the log: step, the step restored, means, lr scale."""
        return [{"step": r["step"], **r["rollback"]} for r in self.log if "rollback" in r]


@dataclass
class Job:
    """Everything one distillation run trains and writes."""
    cfg: DistillConfig
    model: nn.Module  # the student, trained in place
    tokenizer: Any
    manifest: dict  # the student's manifest facts (its source model among them)
    path: Path | None  # the student's folder, when it came from one
    spec: SharingSpec
    teacher: nn.Module
    adapted: bool  # the unshared layers were (or are now) trained: they no longer match the teacher's
    data: TrainData
    data_from: str  # cfg.data, or "train_rows"
    ctx: DistContext
    trainable: list[TrainableParam]
    optimizer: torch.optim.Optimizer
    hybrid: HybridModel
    log: JsonlLog
    run: Path | None
    recon: list[dict] = field(default_factory=list)

    @property
    def source(self) -> dict:
        return self.manifest.get("source", {})

    @property
    def params(self) -> list[nn.Parameter]:
        return [tp.param for tp in self.trainable]

    def save(self, st: LoopState) -> None:
        """A checkpoint of the trained tensors and optimizer in the run folder (if any)."""
        if self.run is None:
            return
        names = [tp.name for tp in self.trainable]
        state = {"step": st.step, "tokens": st.tokens, "seconds": st.seconds, "config": self.cfg.to_dict(),
                 "data_fingerprint": fingerprint(self.data.rows), "reconstruction": self.recon, "source": self.source,
                 "world": self.ctx.world, "lr_scale": st.extra.get("lr_scale", 1.0)}
        save_checkpoint(self.run, st.step, {tp.name: tp.param for tp in self.trainable}, optimizer_tensors(self.optimizer, names),
                        state, self.log.lines, self.cfg.keep_checkpoints)


def _load_student(student) -> tuple[nn.Module, Any, dict, Path | None]:
    """(model, tokenizer, manifest facts, path) from a directory, LoadedModel or module."""
    if isinstance(student, (str, Path)):
        path = Path(student)
        manifest = read_manifest(path)
        lm = load_compressed(path)
        return lm.model, lm.tokenizer, manifest, path
    if isinstance(student, LoadedModel):
        return student.model, student.tokenizer, {"source": student.source.get("source", student.source)}, None
    return student, None, {"source": {}}, None


def _training_data(cfg: DistillConfig, tokenizer, train_rows: torch.Tensor | None, ck: Checkpoint | None) -> TrainData:
    if train_rows is None:
        if tokenizer is None:
            raise ConfigError("no tokenizer to prepare the training text")
        data = TrainData.from_texts(tokenizer, training_texts(cfg.data), cfg.seq_len, cfg.seed)
    else:
        data = TrainData(train_rows, cfg.seed)
        if data.seq_len != cfg.seq_len:
            raise ConfigError(f"train_rows have {data.seq_len} tokens per row, config.seq_len is {cfg.seq_len}")
    if ck is not None and ck.state.get("data_fingerprint") != fingerprint(data.rows):
        raise ConfigError(f"--resume with different training data: fingerprint {fingerprint(data.rows)} vs "
                          f"{ck.state.get('data_fingerprint')} in the checkpoint")
    return data


def prepare(student, cfg: DistillConfig, run: Path | None, ck: Checkpoint | None, teacher: nn.Module | None, tokenizer,
            train_rows: torch.Tensor | None, device: str) -> Job:
    """Load the student (and its teacher unless given), check they belong together, prepare
    the training rows and the trainable tensors with their optimizer."""
    model, tok, manifest, path = _load_student(student)
    tokenizer = tokenizer or tok
    spec = get_spec(model)
    if spec is None:
        raise ModelLoadError("the student is not a compressed model (no edgedelta sharing spec)")
    if teacher is None:
        teacher = load_model(teacher_spec_from(manifest.get("source", {}))).model
    # unshared layers differ from the teacher's once a run trained a LoRA on them: then the
    # teacher check compares sizes and embedding only, and no teacher prefix is reused
    adapted = bool(manifest.get("layers_adapted")) or "layer-lora" in cfg.trainable
    check_teacher(model, teacher, spec, compare_layers=not manifest.get("layers_adapted"))
    data = _training_data(cfg, tokenizer, train_rows, ck)
    ctx = setup(device)
    teacher.to(ctx.device).eval().requires_grad_(False)
    model.to(ctx.device).train()
    trainable = select_trainable(model, spec, cfg.trainable, cfg.lora_rank, cfg.seed)
    optimizer = torch.optim.AdamW([tp.param for tp in trainable], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    log = JsonlLog(run / "train_log.jsonl" if (run is not None and ctx.is_main) else None, ck.log if ck else None)
    return Job(cfg, model, tokenizer, manifest, path, spec, teacher, adapted, data, cfg.data if train_rows is None else "train_rows",
               ctx, trainable, optimizer, HybridModel.for_spec(model, teacher, spec, adapted), log, run)


def start(job: Job, ck: Checkpoint | None, progress: bool) -> LoopState:
    """The state training starts from: the checkpoint's, or step 0 after the per-group
    reconstruction (config.recon_tokens), which is checkpointed so --resume never repeats it."""
    if ck is not None:
        _restore(job.trainable, ck.params, ck.path)
        load_optimizer_tensors(job.optimizer, [tp.name for tp in job.trainable], ck.optimizer)
        job.recon = ck.state.get("reconstruction", [])
        return LoopState(ck.state["step"], ck.state["tokens"], ck.state.get("seconds", 0.0), {"lr_scale": ck.state.get("lr_scale", 1.0)})
    state = LoopState()
    cfg = job.cfg
    if cfg.recon_tokens > 0:
        n = max(1, -(-cfg.recon_tokens // cfg.seq_len))
        g = torch.Generator().manual_seed(cfg.seed + 1)
        rows = job.data.rows[torch.randperm(job.data.num_rows, generator=g)[:n]]
        t0 = time.time()
        job.recon = reconstruct_groups(job.model, job.teacher, job.spec, job.trainable, rows, lr=cfg.recon_lr,
                                       epochs=cfg.recon_epochs, batch=cfg.recon_batch, inputs=cfg.recon_inputs, betas=cfg.betas,
                                       clip=cfg.clip, device=job.ctx.device, autocast=job.ctx.use_autocast,
                                       progress=progress and job.ctx.is_main)
        state.extra["recon_seconds"] = time.time() - t0
        if job.ctx.is_main:
            job.save(state)
    return state


def train(job: Job, state: LoopState, progress: bool, stop_after: int | None) -> LoopState:
    """The distillation loop from `state`; the teacher's top-k logits come from a cache when
    config.teacher_cache names one (built by the main process first)."""
    cfg, ctx, data_fp = job.cfg, job.ctx, fingerprint(job.data.rows)
    cache = None
    if cfg.teacher_cache is not None:
        cache = TopKCache(cfg.teacher_cache, teacher_fingerprint(job.teacher), data_fp, cfg.teacher_topk)
        if ctx.is_main:
            cache.ensure(job.teacher, job.data.rows, job.data.rows_used(cfg.total_steps, cfg.batch_size), cfg.recon_batch,
                         ctx.device, ctx.use_autocast, progress)
        ctx.barrier()
        if not ctx.is_main:
            cache = TopKCache(cfg.teacher_cache, teacher_fingerprint(job.teacher), data_fp, cfg.teacher_topk)
    try:
        return train_loop(job.hybrid, job.teacher, job.params, job.optimizer, job.data, cfg, ctx, state, job.log, job.save,
                          progress=progress, stop_after=stop_after, topk_cache=cache,
                          snapshot_dir=job.run if ctx.is_main or job.run is None else None)
    except TrainingInterrupted as e:
        where = f" in '{job.run}'" if job.run is not None else " (no run folder: nothing saved)"
        raise TrainingInterrupted(str(e).replace("checkpoint saved", "checkpoint saved" + where)) from None


def finish(job: Job, state: LoopState, out: Path | None, force: bool) -> DistillResult:
    """Merge every LoRA into the weights it adapts, refuse non-finite tensors, write `out`
    (main process) and remove the run folder once it is complete."""
    final = job.log.lines[-1]["loss"] if job.log.lines else None
    rate = state.tokens / max(state.seconds, 1e-9) if state.step else 0.0
    result = DistillResult(out, state.step, state.tokens, state.seconds, rate, final, sum(p.numel() for p in job.params),
                           job.recon, job.log.lines)
    bad = [tp.name for tp in job.trainable if not torch.isfinite(tp.param).all()]
    if bad:  # never write a model of NaNs as if it were a result
        raise EdgeDeltaError(f"training diverged: {len(bad)} trained tensor(s) are not finite (e.g. '{bad[0]}'); "
                             f"lower --lr or check the loss weights; nothing was written")
    try:
        merge_lora(job.model)
    except ValueError as e:  # finite factors whose product overflows
        raise EdgeDeltaError(f"training diverged: {e}; lower --lr; nothing was written") from None
    job.model.eval()
    if out is not None and job.ctx.is_main:
        facts = {k: v for k, v in job.manifest.items() if k not in _RESERVED}
        facts.update(source=job.source, layers_adapted=job.adapted)
        facts["distill"] = {"config": job.cfg.to_dict(), "result": result.to_dict(),
                            "student_input": str(job.path) if job.path else None, "data": job.data_from,
                            "data_fingerprint": fingerprint(job.data.rows), "processes": job.ctx.world,
                            "device": str(job.ctx.device)}
        extra = {"train_log.jsonl": job.log.text().encode(), "loss_curve.png": loss_curve_png(job.log.lines)}
        save_compressed(job.model, out, tokenizer=job.tokenizer, manifest_facts=facts, force=force, extra_files=extra)
        if job.run is not None:
            shutil.rmtree(job.run, ignore_errors=True)
    job.ctx.barrier()
    return result


@torch.no_grad()
def _restore(trainable: list[TrainableParam], tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    missing = [tp.name for tp in trainable if tp.name not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint '{ckpt}' lacks parameter(s) {missing[:3]} of this run")
    for tp in trainable:
        src = tensors[tp.name]
        if src.shape != tp.param.shape:
            raise CheckpointError(f"checkpoint '{ckpt}': '{tp.name}' has shape {tuple(src.shape)}, expected {tuple(tp.param.shape)}")
        tp.param.copy_(src.to(tp.param.device, tp.param.dtype))
