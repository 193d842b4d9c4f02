"""bench/gpu_recovery.sh, the lent-GPU distillation run, dry-run on the CPU on a tiny random
model: every arm trains and is evaluated, the results are named after the model, and a
probe that runs out of GPU memory splits the batch instead of failing the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import recovery  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher") / "tiny-llama"
    tiny_model("llama", layers=8).save_pretrained(d, safe_serialization=True)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_the_script_runs_every_arm_on_a_named_model(tiny_dir, tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "MODEL": str(tiny_dir), "TARGETS": "12", "BATCH": "4", "GRAD_ACCUM": "2",
           "SEQ": "32", "TOKENS": "256", "EVAL_TOKENS": "64", "RECON_TOKENS": "64", "DEADLINE12": "3600",
           "RES": str(tmp_path / "res"), "WORK": str(tmp_path / "work"), "EXTRA": "--calib-samples 4"}
    env.pop("OUT", None)
    run = subprocess.run(["bash", "bench/gpu_recovery.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert "gpu_recovery_tiny-llama_12 exit: 0" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    res = tmp_path / "res"
    data = json.loads((res / "gpu_recovery_tiny-llama_12.json").read_text())
    assert data["meta"]["model"].startswith("tiny-llama (8 layers")
    # the probe ran; with an hour left, the asked token count is what fits
    assert data["meta"]["grad_accum"] == 2 and data["meta"]["deadline"]["tokens_per_arm"] == 256
    trained = {p["arm"] for p in data["points"] if p["tokens"] == 256}
    assert trained == {"a", "c", "e", "f"}
    for p in data["points"]:
        assert all(p[n]["ppl"] > 1 and p[n]["kl"] >= 0 for n in recovery.EVAL_SETS)
    assert (res / "gpu_recovery_tiny-llama_12.md").is_file() and (res / "gpu_recovery_tiny-llama_12_loss.png").is_file()
    assert not (res / "gpu_recovery_tiny-llama_25.json").exists()  # TARGETS=12 runs only the 12% run


def test_a_probe_out_of_gpu_memory_doubles_grad_accum(monkeypatch):
    calls = []

    def probe(view, params, cfg, teacher, data, ctx):
        calls.append(cfg["grad_accum"])
        if cfg["grad_accum"] < 4:  # a micro-batch of 8 sequences or more does not fit
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 1000.0

    monkeypatch.setattr(recovery, "probe_tok_s", probe)
    base = {"batch_size": 32, "grad_accum": 1}
    ctx = type("Ctx", (), {"device": torch.device("cpu")})()
    rate, peak = recovery.probe_fitting(lambda: (None, [], dict(base)), base, None, None, ctx)
    assert (rate, peak, calls, base["grad_accum"]) == (1000.0, None, [1, 2, 4], 4)
    base = {"batch_size": 2, "grad_accum": 1}  # nothing left to split: the error stands
    monkeypatch.setattr(recovery, "probe_tok_s", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        recovery.probe_fitting(lambda: (None, [], dict(base)), base, None, None, ctx)
    assert base["grad_accum"] == 2


def test_an_unknown_model_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(SystemExit, match=r"^recovery: 'nope' is neither a built-in model \(default, smollm2-135m"):
        recovery.main(["--model", "nope", "--device", "cpu", "--out", str(tmp_path)])
