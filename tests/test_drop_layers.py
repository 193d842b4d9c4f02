"""Removal before sharing (CompressConfig.drop_layers): the least influential layers go, the
sharing plan covers the rest of the budget, and every later stage (storage, distillation with
progressive replacement and teacher reuse, reconstruction, export) works on a student with
fewer layers than its teacher."""

import copy

import pytest
import torch

from edgedelta.delta.accounting import count_parameters
from edgedelta.delta.calibration import Calibration
from edgedelta.delta.compress import compress, format_plan
from edgedelta.delta.drop_search import drop_candidates, heldout_rows
from edgedelta.delta.config import CompressConfig
from edgedelta.delta.storage import load_compressed, save_compressed
from edgedelta.distill.api import distill
from edgedelta.distill.config import DistillConfig
from edgedelta.distill.hybrid import HybridModel, LayerRecorder
from edgedelta.distill.reconstruct import reconstruct_groups
from edgedelta.distill.teacher import check_teacher
from edgedelta.distill.trainable import select_trainable
from edgedelta.errors import ConfigError
from edgedelta.models.adapters import adapter_for
from edgedelta.models.similarity import block_influence
from edgedelta.models.surgery import remove_layers

from .distill.common import rows
from .tiny import tiny_ids, tiny_model, tiny_tokenizer

torch.set_num_threads(1)
CALIB = tiny_ids(8, 32)


def _cfg(**kw):
    return CompressConfig(**{**dict(target_params=0.7, drop_layers=2, rank_attn=2, rank_mlp=2, calib_samples=4), **kw})


@pytest.fixture(scope="module")
def teacher_and_result():
    teacher = tiny_model(layers=8)
    return teacher, compress(teacher, _cfg(), calib_ids=CALIB, progress=False)


def test_removes_least_influential_layers_then_shares_within_budget(teacher_and_result):
    teacher, res = teacher_and_result
    bi = block_influence(teacher, CALIB)
    drop = sorted(sorted(range(8), key=lambda i: bi[i])[:2])
    spec, plan = res.spec, res.plan
    assert plan["removed_layers"] == drop and spec.removed_layers(8) == drop
    assert spec.source_layers == [i for i in range(8) if i not in drop]
    assert len(adapter_for(res.model.config).decoder_layers(res.model)) == res.model.config.num_hidden_layers == 6
    original = count_parameters(teacher)["total"]
    assert plan["original_params"] == original and plan["compressed_params"] <= 0.7 * original
    assert plan["ratio"] == pytest.approx(count_parameters(res.model)["total"] / original)
    assert spec.groups and all(0 <= li < 6 for g in spec.groups for li in g)
    text = format_plan(plan)  # printed in the original numbering
    first = spec.groups[0]
    assert f"removed layers (2): {drop[0]}, {drop[1]}" in text
    assert f"[{','.join(str(spec.source_of(li)) + ('*' if li == spec.anchors[0] else '') for li in first)}]" in text
    assert len(adapter_for(teacher.config).decoder_layers(teacher)) == 8  # input untouched


def test_saved_model_reloads_exactly_with_its_layer_map(teacher_and_result, tmp_path):
    _, res = teacher_and_result
    save_compressed(res.model, tmp_path / "c", tokenizer=tiny_tokenizer())
    lm = load_compressed(tmp_path / "c")
    assert lm.model.edgedelta_spec.source_layers == res.spec.source_layers
    x = tiny_ids(2, 16, seed=3)
    assert torch.equal(lm.model(input_ids=x).logits, res.model(input_ids=x).logits)


def test_explicit_groups_count_original_layers_and_are_never_removed():
    teacher = tiny_model(layers=8)
    bi = block_influence(teacher, CALIB)
    weakest = sorted(range(7), key=lambda i: bi[i] + bi[i + 1])[0]  # a pair the removal would like to take
    group = [weakest, weakest + 1]
    res = compress(teacher, _cfg(target_params=None, groups=[group], drop_layers=3), calib_ids=CALIB, progress=False)
    assert not set(group) & set(res.plan["removed_layers"]) and len(res.plan["removed_layers"]) == 3
    assert [[res.spec.source_of(li) for li in g] for g in res.spec.groups] == [group]


def test_bad_removal_settings_are_clear_errors():
    teacher = tiny_model(layers=4)
    with pytest.raises(ConfigError, match="drop_layers must be a whole number >= 0 or 'auto', got -1"):
        _cfg(drop_layers=-1)
    with pytest.raises(ConfigError, match="drop_layers 3 is too many"):
        compress(teacher, _cfg(drop_layers=3), calib_ids=CALIB, progress=False)
    with pytest.raises(ConfigError, match="already within target_params 0.8: lower drop_layers"):
        compress(teacher, _cfg(target_params=0.8, drop_layers=2), calib_ids=CALIB, progress=False)
    with pytest.raises(ValueError, match="covs"):
        compress(teacher, _cfg(), calibration=Calibration(CALIB, covs={}), progress=False)
    with pytest.raises(ConfigError, match="calib_ids or calibration, not both"):
        compress(teacher, _cfg(), calib_ids=CALIB, calibration=Calibration(CALIB), progress=False)


HELDOUT = tiny_ids(6, 32, seed=5)  # rows the auto search judges on, apart from CALIB (the fitting rows)


def test_auto_builds_every_count_and_keeps_the_lowest_heldout_kl():
    from edgedelta.delta.plan import kl_to, log_probs

    teacher = tiny_model(layers=8)
    res = compress(teacher, _cfg(drop_layers="auto"), calib_ids=CALIB, heldout_ids=HELDOUT, progress=False)
    search = res.plan["drop_search"]
    # at 0.7 of 8 layers, removal alone meets the budget from 3 layers on: counts 0, 1, 2 are built
    assert list(search["kl"]) == [0, 1, 2] and search["stopped"].startswith("3: ")
    assert search["chosen"] == min(search["kl"], key=search["kl"].get)
    assert "6 held-out sequences" in search["metric"]
    assert len(res.plan.get("removed_layers", [])) == search["chosen"]
    ref_held, ref_fit = log_probs(teacher, HELDOUT), log_probs(teacher, CALIB[:8])
    for count in (0, 1, 2):  # each KL is that count's model, built on its own from the fitting rows alone
        alone = compress(teacher, _cfg(drop_layers=count), calib_ids=CALIB, progress=False)
        assert kl_to(ref_held, log_probs(alone.model, HELDOUT)) == pytest.approx(search["kl"][count], abs=1e-4)
        assert kl_to(ref_fit, log_probs(alone.model, CALIB[:8])) == pytest.approx(search["kl_calibration"][count], abs=1e-4)
        with torch.no_grad():
            nll = torch.nn.functional.cross_entropy(alone.model(input_ids=HELDOUT).logits[:, :-1].flatten(0, 1), HELDOUT[:, 1:].flatten())
        assert float(nll) == pytest.approx(search["nll"][count], abs=1e-4)
        if count == search["chosen"]:
            assert torch.equal(alone.model(input_ids=CALIB).logits, res.model(input_ids=CALIB).logits)
    assert "layers removed first, searched (held-out KL to the original): 0: " in format_plan(res.plan)
    (only,) = drop_candidates(teacher, _cfg(drop_layers="auto"), Calibration(CALIB), HELDOUT, progress=False, counts=[2])
    assert only.count == 2 and only.kl == search["kl"][2] and len(only.result.plan["removed_layers"]) == 2
    capped = compress(teacher, _cfg(drop_layers="auto", drop_search_max=1), calib_ids=CALIB, heldout_ids=HELDOUT,
                      progress=False)
    assert list(capped.plan["drop_search"]["kl"]) == [0, 1] and "drop_search_max" in capped.plan["drop_search"]["stopped"]


def test_auto_judges_on_rows_it_does_not_fit():
    """The rows passed as held-out are the ones judged on (the fitting rows give back the old
    criterion), and the rows drawn by default are not calibration rows."""
    from edgedelta.data.text import calibration_batches

    teacher = tiny_model(layers=8)
    on_fit = compress(teacher, _cfg(drop_layers="auto"), calib_ids=CALIB, heldout_ids=CALIB[:8], progress=False)
    assert on_fit.plan["drop_search"]["kl"] == on_fit.plan["drop_search"]["kl_calibration"]
    cfg = _cfg(drop_layers="auto", drop_search_samples=3, calib_text="wiki-train")
    tok = tiny_tokenizer()
    held = heldout_rows(cfg, tok)
    calib = calibration_batches(tok, cfg.calib_samples, cfg.calib_seq_len, cfg.seed, cfg.calib_text)
    assert held.shape == (3, cfg.calib_seq_len)
    assert not any(torch.equal(h, c) for h in held for c in calib)
    with pytest.raises(ConfigError, match="judges each count on held-out text: pass a tokenizer or heldout_ids"):
        compress(teacher, _cfg(drop_layers="auto"), calib_ids=CALIB, progress=False)
    with pytest.raises(ConfigError, match="drop_search_samples must be a whole number >= 1, got 0"):
        _cfg(drop_layers="auto", drop_search_samples=0)


def test_auto_measures_the_originals_block_influence_once(monkeypatch):
    """The search ranks removal candidates by the original's influence for every count, and the
    anchor base (count 0) reuses it; each reduced model is measured once for its own anchors."""
    import edgedelta.models.similarity as similarity

    teacher = tiny_model(layers=8)
    seen = []
    real = similarity.layer_similarities
    monkeypatch.setattr(similarity, "layer_similarities", lambda m, c: seen.append(m.config.num_hidden_layers) or real(m, c))
    res = compress(teacher, _cfg(drop_layers="auto", base="anchor"), calib_ids=CALIB, heldout_ids=HELDOUT, progress=False)
    assert list(res.plan["drop_search"]["kl"]) == [0, 1, 2]
    assert sorted(seen) == [6, 7, 8]  # the original once, then the models with 1 and 2 layers removed


def test_auto_needs_a_budget_and_a_sane_cap():
    with pytest.raises(ConfigError, match="drop_layers 'auto' needs target_params"):
        _cfg(drop_layers="auto", target_params=None, groups=[[1, 2]])
    with pytest.raises(ConfigError, match="drop_layers must be a whole number >= 0 or 'auto', got 'some'"):
        _cfg(drop_layers="some")
    with pytest.raises(ConfigError, match="drop_search_max must be a whole number >= 1, got 0"):
        _cfg(drop_layers="auto", drop_search_max=0)


@torch.no_grad()
def test_hybrid_maps_student_layers_to_the_teacher_layers_they_were(teacher_and_result):
    teacher, res = teacher_and_result
    student = copy.deepcopy(res.model)
    spec = student.edgedelta_spec
    grouped = [li for g in spec.groups for li in g]
    hy = HybridModel(student, teacher, grouped, spec.source_layers)
    x = rows(2, 16)
    # all originals in place: the teacher less its removed layers, exactly (without a KV
    # cache, as in training: the teacher's modules keep the teacher's cache slots)
    hy.set_active(torch.zeros(len(grouped), dtype=torch.bool))
    reduced = remove_layers(copy.deepcopy(teacher), spec.removed_layers(8))
    assert torch.equal(student(input_ids=x, use_cache=False).logits, reduced(input_ids=x, use_cache=False).logits)
    # the reused teacher prefix stops at the first removed layer
    first_removed = spec.removed_layers(8)[0]
    assert hy.prefix_cut() == first_removed
    full = student(input_ids=x, use_cache=False).logits
    t_layers = adapter_for(teacher.config).decoder_layers(teacher)
    if first_removed:
        with LayerRecorder({first_removed - 1: t_layers[first_removed - 1]}) as rec:
            teacher(input_ids=x)
        with hy.teacher_prefix(rec.outputs) as cut:
            assert cut == first_removed
            assert torch.equal(student(input_ids=x, use_cache=False).logits, full)


def test_teacher_check_follows_the_layer_map(teacher_and_result):
    teacher, res = teacher_and_result
    check_teacher(res.model, teacher, res.spec)  # the real teacher passes
    with pytest.raises(ConfigError, match="not made from this teacher"):
        check_teacher(res.model, tiny_model(layers=8, seed=1), res.spec)
    with pytest.raises(ConfigError, match="num_hidden_layers is 6 in the student, 7 in the teacher"):
        check_teacher(res.model, tiny_model(layers=7), res.spec)


def _perturbed_student(res):
    """The compressed model with random deltas: a clear, recoverable gap to the teacher
    (a tiny random model's removed layers alone cost almost nothing)."""
    student = copy.deepcopy(res.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "delta_" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return student


def test_distillation_with_progressive_replacement_and_reconstruction(teacher_and_result):
    teacher, res = teacher_and_result
    student = _perturbed_student(res)
    spec = student.edgedelta_spec
    rep = reconstruct_groups(student, teacher, spec, select_trainable(student, spec, ["deltas", "gates"]), rows(16),
                             lr=3e-3, epochs=3, batch=4, progress=False)
    assert all(r["mse_after"] < r["mse_before"] for r in rep), rep
    base = dict(tokens=16 * 4 * 8, seq_len=16, batch_size=4, lr=3e-3, warmup_frac=0.0, checkpoint_every=0)
    out = distill(_perturbed_student(res), DistillConfig(**base, schedule="plain"), None, teacher=teacher, train_rows=rows(),
                  progress=False)
    kl = [r["kl"] for r in out.log]
    assert kl[-1] < 0.7 * kl[0], kl
    # progressive: the shared layers are swapped in over the run (the removed ones never come
    # back), with the hidden-state loss against the teacher layers they were
    out = distill(student, DistillConfig(**base, schedule="linear", p0=0.3, ramp_frac=0.5, hidden_weight=0.5), None,
                  teacher=teacher, train_rows=rows(), progress=False)
    n_shared = sum(len(g) for g in spec.groups)
    assert out.log[0]["p"] < 1 and out.log[-1]["p"] == 1 and out.log[-1]["active"] == n_shared
    assert all(r["hidden"] > 0 for r in out.log if r["active"])


def test_export_matches_pytorch(teacher_and_result, tmp_path):
    import json

    from edgedelta.export import ExportConfig, audit, export_onnx

    _, res = teacher_and_result
    save_compressed(res.model, tmp_path / "c", tokenizer=tiny_tokenizer())
    art = export_onnx(tmp_path / "c", ExportConfig(), tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    assert m["sharing"]["source_layers"] == res.spec.source_layers
    assert m["parity"]["logits_with_past"]["max_abs_diff"] <= 1e-3 and m["parity"]["greedy_decode"]["identical"]
    assert audit(art)["ok"]


def _save_pair(teacher, res, root):
    """root/teacher (plain) and root/student (the perturbed compressed model naming it as source)."""
    tok = tiny_tokenizer()
    teacher.save_pretrained(root / "teacher", safe_serialization=True)
    tok.save_pretrained(root / "teacher")
    save_compressed(_perturbed_student(res), root / "student", tokenizer=tok,
                    manifest_facts={"source": {"kind": "hf", "path": str(root / "teacher")}})


def test_cli_distills_a_student_with_removed_layers(teacher_and_result, tmp_path, capsys):
    from edgedelta.cli import main

    teacher, res = teacher_and_result
    _save_pair(teacher, res, tmp_path)
    (tmp_path / "manual.txt").write_text("Check the pressure valve before restarting the conveyor belt. " * 60)
    (tmp_path / "distill.json").write_text('{"seq_len": 16, "schedule": "curriculum", "recon_tokens": 32, "recon_epochs": 1}')
    rc = main(["distill", str(tmp_path / "student"), "--tokens", "256", "--batch-size", "4", "--config", str(tmp_path / "distill.json"),
               "--data", str(tmp_path / "manual.txt"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert load_compressed(tmp_path / "out").model.edgedelta_spec.source_layers == res.spec.source_layers


def _distill_with_loras(teacher, res, tmp_path, trainable: list[str]):
    """Distil the saved student with LoRA kinds (rank 2); KL must fall and, merged on save,
    the unique parameter count must not change. Returns (config, the loaded output)."""
    _save_pair(teacher, res, tmp_path)
    cfg = DistillConfig(tokens=16 * 4 * 8, seq_len=16, batch_size=4, lr=3e-3, warmup_frac=0.0, checkpoint_every=0,
                        schedule="plain", trainable=trainable, lora_rank=2)
    out = distill(tmp_path / "student", cfg, tmp_path / "out", train_rows=rows(), progress=False)
    kl = [r["kl"] for r in out.log]
    assert kl[-1] < 0.7 * kl[0], kl
    lm = load_compressed(tmp_path / "out")  # merged: the saved structure is the compressed model's
    assert count_parameters(lm.model)["total"] == count_parameters(res.model)["total"]
    return cfg, lm


def test_layer_lora_trains_the_unshared_layers_and_merges(teacher_and_result, tmp_path):
    # the recipe that beat healed removal at equal tokens (bench/results/recovery_mixed_f.md):
    # removal + sharing, and a LoRA on every unshared layer, merged into the saved model
    teacher, res = teacher_and_result
    cfg, lm = _distill_with_loras(teacher, res, tmp_path, ["deltas", "gates", "layer-lora"])
    spec = lm.model.edgedelta_spec
    unshared = [li for li in range(6) if li not in {i for g in spec.groups for i in g}]
    s_layers, t_layers = adapter_for(teacher.config).decoder_layers(lm.model), adapter_for(teacher.config).decoder_layers(teacher)
    li = unshared[-1]
    assert not torch.equal(s_layers[li].mlp.up_proj.weight, t_layers[spec.source_of(li)].mlp.up_proj.weight)
    assert count_parameters(lm.model)["total"] == count_parameters(res.model)["total"]
    # its unshared layers no longer match the teacher's, as recorded: a second run still accepts that teacher
    with pytest.raises(ConfigError, match="not made from this teacher"):
        check_teacher(lm.model, teacher, spec)
    again = DistillConfig(**{**cfg.to_dict(), "tokens": 16 * 4 * 2, "trainable": ["deltas"]})
    distill(tmp_path / "out", again, tmp_path / "out2", train_rows=rows(), progress=False)


def test_shared_base_lora_with_layer_lora_merges_into_one_base_per_group(teacher_and_result, tmp_path):
    # the recipe that met #3's target (bench/results/recovery_b1/): layer-lora plus a LoRA on
    # each shared base; both merge on save, the bases stay one Parameter per group
    teacher, res = teacher_and_result
    _, lm = _distill_with_loras(teacher, res, tmp_path, ["deltas", "gates", "lora", "layer-lora"])
    spec, adapter = lm.model.edgedelta_spec, adapter_for(teacher.config)
    after, before = adapter.decoder_layers(lm.model), adapter.decoder_layers(res.model)
    for group in spec.groups:
        for proj in spec.projections:
            bases = [adapter.get_linear(after[li], proj).weight for li in group]
            assert all(b is bases[0] for b in bases), (group, proj)  # still shared
            assert not torch.equal(bases[0], adapter.get_linear(before[group[0]], proj).weight)  # the LoRA was merged in
