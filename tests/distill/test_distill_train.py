"""End-to-end distillation on tiny models: KL falls, reconstruction helps, resume is exact,
bad input is refused before anything is written."""

import json

import pytest
import torch
from safetensors.torch import load_file

from edgedelta.delta.storage import load_compressed
from edgedelta.distill.api import distill
from edgedelta.distill.run_folder import run_dir_for
from edgedelta.distill.checkpoint import CheckpointError, latest_checkpoint
from edgedelta.distill.config import DistillConfig
from edgedelta.distill.reconstruct import reconstruct_groups
from edgedelta.distill.trainable import select_trainable
from edgedelta.distill.trainer import TrainingInterrupted
from edgedelta.errors import ConfigError, OutputExistsError
from edgedelta.manifest import read_manifest

from .common import make_pair, make_tokenizer, rows

torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared machine


def _cfg(**kw):
    base = dict(tokens=16 * 4 * 8, seq_len=16, batch_size=4, lr=3e-3, warmup_frac=0.0, checkpoint_every=2)
    return DistillConfig(**{**base, **kw})


def test_kl_falls_and_output_is_a_loadable_compressed_model(tmp_path):
    teacher, student = make_pair()
    res = distill(student, _cfg(schedule="plain"), tmp_path / "out", teacher=teacher, tokenizer=make_tokenizer(),
                  train_rows=rows(), progress=False)
    kl = [r["kl"] for r in res.log]
    assert len(kl) == 8 and kl[-1] < 0.7 * kl[0]
    out = tmp_path / "out"
    assert {"train_log.jsonl", "loss_curve.png", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not run_dir_for(out).exists()  # run folder removed once the output is complete
    facts = read_manifest(out)["distill"]
    assert DistillConfig.from_dict(facts["config"]) == _cfg(schedule="plain")
    loaded = load_compressed(out).model
    x = rows(2, 16, seed=5)
    assert torch.allclose(loaded(input_ids=x).logits, student.eval()(input_ids=x).logits, atol=1e-5)


def test_reconstruction_fits_each_group():
    teacher, student = make_pair(groups=((0, 1), (2, 3)))
    spec = student.edgedelta_spec
    tps = select_trainable(student, spec, ["deltas", "gates"])
    for inputs in ("teacher", "student"):
        rep = reconstruct_groups(student, teacher, spec, tps, rows(16), lr=3e-3, epochs=3, batch=4, inputs=inputs, progress=False)
        assert [r["group"] for r in rep] == [[0, 1], [2, 3]]
        assert all(r["mse_after"] < r["mse_before"] for r in rep), rep


def test_hidden_and_lm_losses_run():
    teacher, student = make_pair()
    res = distill(student, _cfg(tokens=16 * 4 * 2, hidden_weight=1.0, lm_weight=0.1, schedule="plain"), None,
                  teacher=teacher, train_rows=rows(), progress=False)
    assert res.log[0]["hidden"] > 0 and res.log[0]["lm"] > 0


def test_resume_continues_exactly(tmp_path):
    cfg = _cfg(schedule="linear", p0=0.3, ramp_frac=0.75, grad_accum=2, recon_tokens=64, recon_epochs=1)
    teacher, student = make_pair()
    full = distill(student, cfg, tmp_path / "a", teacher=teacher, train_rows=rows(), progress=False)

    teacher, student = make_pair()
    with pytest.raises(TrainingInterrupted):
        distill(student, cfg, tmp_path / "b", teacher=teacher, train_rows=rows(), progress=False, stop_after=3)
    assert latest_checkpoint(run_dir_for(tmp_path / "b")).name == "checkpoint-000003"
    assert not (tmp_path / "b").exists()
    # a different config is refused, naming the fields
    with pytest.raises(ConfigError, match=r"lr: 0\.003 -> 0\.001.*schedule"):
        distill(make_pair()[1], _cfg(schedule="plain", lr=1e-3, p0=0.3, ramp_frac=0.75, grad_accum=2, recon_tokens=64,
                                     recon_epochs=1), tmp_path / "b", teacher=teacher, train_rows=rows(), resume=True, progress=False)
    teacher, student = make_pair()  # a fresh process would start from the input model again
    resumed = distill(student, cfg, tmp_path / "b", teacher=teacher, train_rows=rows(), resume=True, progress=False)
    assert resumed.reconstruction == full.reconstruction or all(
        abs(a["mse_after"] - b["mse_after"]) < 1e-9 for a, b in zip(resumed.reconstruction, full.reconstruction))
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(1, 9))


def test_bad_inputs_write_nothing(tmp_path):
    teacher, student = make_pair()
    other_teacher, _ = make_pair(seed=7)
    with pytest.raises(ConfigError, match="not made from this teacher"):
        distill(student, _cfg(), tmp_path / "o", teacher=other_teacher, train_rows=rows(), progress=False)
    assert not (tmp_path / "o").exists() and not run_dir_for(tmp_path / "o").exists()
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        distill(student, _cfg(), tmp_path / "exists", teacher=teacher, train_rows=rows(), progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        distill(student, _cfg(), tmp_path / "o", teacher=teacher, train_rows=rows(), resume=True, progress=False)
    # an interrupted run leaves a run folder: starting again without --resume is refused
    with pytest.raises(TrainingInterrupted):
        distill(student, _cfg(), tmp_path / "o", teacher=teacher, train_rows=rows(), progress=False, stop_after=2)
    with pytest.raises(ConfigError, match="--resume"):
        distill(make_pair()[1], _cfg(), tmp_path / "o", teacher=teacher, train_rows=rows(), progress=False)
    # a corrupt checkpoint is refused with one line, nothing overwritten
    ck = latest_checkpoint(run_dir_for(tmp_path / "o"))
    (ck / "params.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt") as e:
        distill(make_pair()[1], _cfg(), tmp_path / "o", teacher=teacher, train_rows=rows(), resume=True, progress=False)
    assert "\n" not in str(e.value)
    assert (ck / "params.safetensors").read_bytes() == b"garbage" and not (tmp_path / "o").exists()


def test_teacher_topk_cache_matches_live_topk(tmp_path):
    cfg_live = _cfg(tokens=16 * 4 * 4, schedule="plain", teacher_topk=8)
    teacher, student = make_pair()
    live = distill(student, cfg_live, None, teacher=teacher, train_rows=rows(), progress=False)
    cached_cfg = DistillConfig.from_dict({**cfg_live.to_dict(), "teacher_cache": str(tmp_path / "cache")})
    teacher, student = make_pair()
    first = distill(student, cached_cfg, None, teacher=teacher, train_rows=rows(), progress=False)
    assert len(list((tmp_path / "cache").glob("teacher-top8-*.safetensors"))) == 1
    teacher, student = make_pair()
    again = distill(student, cached_cfg, None, teacher=teacher, train_rows=rows(), progress=False)  # reads the file
    ref = [r["loss"] for r in live.log]
    for res in (first, again):
        assert torch.allclose(torch.tensor([r["loss"] for r in res.log]), torch.tensor(ref), rtol=1e-5, atol=1e-8)


def test_sigterm_saves_a_checkpoint_after_the_current_step(tmp_path):
    import os
    import signal

    teacher, student = make_pair()
    calls = []

    def send_sigterm(_m, _a, _o):  # the 3rd student forward (step 3) receives SIGTERM
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    h = student.lm_head.register_forward_hook(send_sigterm)
    with pytest.raises(TrainingInterrupted, match="after step 3/8"):
        distill(student, _cfg(schedule="plain", checkpoint_every=0), tmp_path / "o", teacher=teacher, train_rows=rows(), progress=False)
    h.remove()
    assert latest_checkpoint(run_dir_for(tmp_path / "o")).name == "checkpoint-000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
