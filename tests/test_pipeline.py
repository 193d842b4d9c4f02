"""The main job end to end on a tiny model: every stage runs, the report is written, and a
re-run reuses every stage."""

import json

import pytest

from edgedelta.cli import main
from edgedelta.pipeline import PipelineConfig, run_pipeline
from edgedelta.recipes import DELTALLM, DROP_SHARE

from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "model"
    model = tiny_model("llama", layers=8)
    model.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _cfg(model_dir, **kw):
    base = dict(model=str(model_dir), target_params=0.88, tokens=256, recon_tokens=0, devices="rpi5-8gb", contexts=[32, 64],
                tasks=["ppl", "arc_easy"], limit=4, ppl_tokens=256, calib_samples=4)
    base.update(kw)
    return PipelineConfig(**base)


def test_pipeline_end_to_end_and_resume(tiny_dir, tmp_path, monkeypatch):
    import gc
    import weakref

    from edgedelta import pipeline

    out = tmp_path / "run"
    logs = []
    originals, alive_at_export = [], []  # the original model is not held through the exports
    load, export = pipeline._Context.original, pipeline._Context.export
    monkeypatch.setattr(pipeline._Context, "original", lambda self: originals.append(weakref.ref(load(self).model)) or self._orig)
    monkeypatch.setattr(pipeline._Context, "export",
                        lambda self, *a: alive_at_export.append(any(r() is not None for r in originals)) or export(self, *a))
    index = run_pipeline(_cfg(tiny_dir), out, log=logs.append)
    gc.collect()
    assert originals and alive_at_export == [False, False]
    text = index.read_text()
    for section in ("Compression plan", "Quality", "sharing audit", "Sample generation", "Devices", "Recipe: `drop-share`"):
        assert section in text
    assert (out / "index.html").is_file() and (out / "devices" / "report.md").is_file()
    # the default recipe is the one measured best at the budget, and the log names the file that measured it
    assert any(m.startswith("recipe drop-share: measured best at keep 88%") and "bench/results/" in m for m in logs)
    # the time estimate is printed before any work, for the parameters the model's files store
    assert any(m.startswith("edgedelta pipeline: full budgets, expect roughly") and "M parameters" in m and "(--quick: about" in m
               for m in logs)
    state = json.loads((out / "stages.json").read_text())
    assert set(state) == {"compress", "distill", "evaluate", "export original", "export compressed", "sample generation", "devices"}
    assert state["compress"]["result"]["ratio"] <= 0.88
    assert len(state["compress"]["result"]["removed_layers"]) == DROP_SHARE.plan.drop_layers(0.88, 8)  # the recipe's count
    manifest = json.loads((out / "distilled" / "manifest.json").read_text())
    assert manifest["layers_adapted"] is True and manifest["distill"]["config"]["trainable"] == list(DROP_SHARE.distill.trainable)
    assert manifest["distill"]["config"]["lr"] == DROP_SHARE.distill.lr
    # unchanged inputs: every stage is reused
    logs.clear()
    run_pipeline(_cfg(tiny_dir), out, log=logs.append)
    assert sum("unchanged, reusing" in m for m in logs) == 7
    # a corrupted stage output is detected and only that stage and its dependants rerun
    (out / "artifacts" / "compressed" / "model.onnx.data").write_bytes(b"corrupt")
    logs.clear()
    run_pipeline(_cfg(tiny_dir), out, log=logs.append)
    rerun = [m for m in logs if m.endswith("...")]
    assert any("export compressed" in m for m in rerun) and not any("compress ..." in m and "export" not in m for m in rerun)
    # artifacts for arm64 devices: only the exports and what reads them rerun
    logs.clear()
    run_pipeline(_cfg(tiny_dir, cpu_arch="arm64"), out, log=logs.append)
    reused = {m.split("] ")[1].split(":")[0] for m in logs if "unchanged, reusing" in m}
    assert reused == {"compress", "distill", "evaluate"}, logs
    art = json.loads((out / "artifacts" / "compressed" / "manifest.json").read_text())
    assert art["export_config"]["cpu_arch"] == "arm64"
    # another recipe: compression and distillation rerun with its plan and its trainer
    logs.clear()
    run_pipeline(_cfg(tiny_dir, recipe="deltallm", cpu_arch="arm64"), out, log=logs.append)
    assert not any("reusing" in m for m in logs if m.startswith(("[1/7]", "[2/7]")))
    manifest = json.loads((out / "distilled" / "manifest.json").read_text())
    assert manifest["distill"]["config"]["trainable"] == list(DELTALLM.distill.trainable)
    assert not json.loads((out / "stages.json").read_text())["compress"]["result"]["removed_layers"]


def test_quick_keeps_the_recipe_with_smaller_budgets():
    full, quick = PipelineConfig(target_params=0.75), PipelineConfig.quick_config(target_params=0.75)
    assert full.recipe == quick.recipe == "drop-share" and "quality_healed_b1_25_all" in full.recipe_why
    assert quick.tokens == DROP_SHARE.distill.quick_tokens < full.tokens == DROP_SHARE.distill.tokens
    assert quick.limit < full.limit and quick.distill_config().lr == full.distill_config().lr == DROP_SHARE.distill.lr
    assert PipelineConfig(recipe="deltallm").recipe_why == "chosen with --recipe"
    assert "not measured at keep 60%" in PipelineConfig(target_params=0.6).recipe_why


@pytest.mark.parametrize("argv", [
    ["pipeline", "--target-params", "1.5"],
    ["pipeline", "--tokens", "-3"],
    ["pipeline", "--contexts", "0,512"],
    ["pipeline", "--devices", "toaster-9000"],
    ["pipeline", "--recipe", "removal"],
    ["pipeline", "--recipe", "fastest"],
    ["pipeline", "--drop-layers", "most"],
    ["pipeline", "--cpu-arch", "riscv"],
])
def test_pipeline_bad_input_is_one_line(argv, tmp_path, capsys):
    code = main(argv + ["--out", str(tmp_path / "o"), "--model", "does-not-matter"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "o").exists()
