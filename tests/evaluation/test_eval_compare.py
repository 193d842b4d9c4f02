"""`compare` end to end on a tiny random model: every method built at the delta model's
budget, healed with the same rows, evaluated, and written (json, md, png)."""

import json

import pytest

from edgedelta.evaluation.api import EvalConfig
from edgedelta.experiments.compare import CompareConfig, compare, write_results
from edgedelta.errors import ConfigError
from edgedelta.recipes import DROP_SHARE

from ..bpe_tiny import make_model


@pytest.fixture()
def files(tmp_path):
    tf = tmp_path / "items.jsonl"
    tf.write_text("\n".join(json.dumps(o) for o in [
        {"question": "Which pump runs at 1450 rpm?", "choices": ["line three", "line four"], "answer": 0},
        {"context": "The valve is", "choices": ["open", "closed", "broken"], "answer": 2},
    ]) + "\n")
    txt = tmp_path / "manual.txt"
    txt.write_text("Check the pressure valve before restarting the conveyor belt. " * 40)
    return tf, txt


def test_compare_tiny_end_to_end(tiny_tok, files, tmp_path):
    tf, txt = files
    model = make_model(len(tiny_tok), layers=6)
    cfg = CompareConfig(target_params=0.8, methods=["deltallm", "deltallm-drop", "shortgpt"], heal_tokens=32, heal_seq_len=32, drop_layers=1,
                        recipe="deltallm", calib_samples=4, calib_seq_len=32, compress={"rank_attn": 2, "rank_mlp": 2},
                        eval=EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64))
    res = compare(model, tiny_tok, cfg, progress=False)
    rows = {(r["method"], r["stage"]): r for r in res["rows"]}
    assert ("original", "original") in rows
    for m in ("deltallm", "deltallm-drop", "shortgpt"):
        for stage in ("built", "healed"):
            r = rows[(m, stage)]
            assert "error" not in r, r
            assert 0 <= r["eval"]["average"] <= 1
    # healing never changes the unique-parameter count
    assert rows[("shortgpt", "built")]["params"] == rows[("shortgpt", "healed")]["params"]
    assert res["budget_params"] == rows[("deltallm", "built")]["params"]  # the delta model sets the budget
    drop = rows[("deltallm-drop", "built")]
    assert len(drop["report"]["plan"]["removed_layers"]) == 1 and drop["params"] <= res["budget_params"]
    # a random model is not above chance: make the reference informative so retention is defined
    res["rows"][0]["eval"]["tasks"]["file:items"].update(score=1.0, acc=1.0, acc_stderr=0.0, correct=[1, 1])
    out = tmp_path / "out"
    out.mkdir()
    write_results(res, out, "tiny")
    assert (out / "retention.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "shortgpt" in md and "retention" in md and "| *chance* |" in md and "| *majority class* |" in md
    assert "- deltallm − shortgpt: " in md and "- deltallm − deltallm-drop" not in md  # paired on the same items


def test_recipe_heals_every_method_alike(tiny_tok, files):
    """The drop-share recipe: the delta model also trains LoRAs on its shared bases and unshared
    layers; the first DeltaLLM method (here deltallm-drop alone) sets both the budget and the
    baselines' LoRA size; the recipe's lr and batch are every method's."""
    tf, txt = files
    model = make_model(len(tiny_tok), layers=6)
    cfg = CompareConfig(target_params=0.8, methods=["shortgpt", "deltallm-drop"], heal_tokens=64, heal_seq_len=32, drop_layers=1,
                        recipe="drop-share", distill={"lora_rank": 2}, calib_samples=4, calib_seq_len=32,
                        compress={"rank_attn": 2, "rank_mlp": 2},
                        eval=EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64))
    res = compare(model, tiny_tok, cfg, progress=False)
    rows = {(r["method"], r["stage"]): r for r in res["rows"]}
    assert [r["method"] for r in res["rows"][1:]] == ["deltallm-drop"] * 2 + ["shortgpt"] * 2  # delta method first
    assert res["budget_params"] == rows[("deltallm-drop", "built")]["params"]
    drop_heal, sg_heal = rows[("deltallm-drop", "healed")]["heal"], rows[("shortgpt", "healed")]["heal"]
    assert drop_heal["lr"] == sg_heal["lr"] == DROP_SHARE.distill.lr == DROP_SHARE.heal.lr
    assert drop_heal["batch"] == sg_heal["batch"] == 1 and sg_heal["steps"] == 2  # 64 tokens = 2 rows of 32, one per step
    assert len(drop_heal["losses"]) == len(sg_heal["losses"]) == 2 and drop_heal["rollbacks"] == sg_heal["rollbacks"] == 0
    assert rows[("deltallm-drop", "healed")]["params"] == rows[("deltallm-drop", "built")]["params"]  # LoRA merged
    assert "recipe drop-share: trains deltas+gates+norms+lora+layer-lora (LoRA rank 2, merged)" in drop_heal["how"]
    # the baselines' LoRA is sized to the delta model's trainable count, within one rank step
    per_rank = sg_heal["trainable_params"] / sg_heal["rank"]
    assert abs(sg_heal["trainable_params"] - drop_heal["trainable_params"]) <= per_rank / 2 + 1


def test_compare_config_errors():
    with pytest.raises(ConfigError, match="fraction"):
        CompareConfig(target_params=1.2)
    with pytest.raises(ConfigError, match="known"):
        CompareConfig(methods=["slicegpt2"])
    with pytest.raises(ConfigError):
        CompareConfig(heal_tokens=-1)
    with pytest.raises(ConfigError, match="drop_layers"):
        CompareConfig(methods=["deltallm-drop"], drop_layers=0)
    with pytest.raises(ConfigError, match="unknown recipe 'fast'"):
        CompareConfig(recipe="fast")
    with pytest.raises(ConfigError, match="heals only pruned models"):
        CompareConfig(recipe="removal")
    assert CompareConfig(target_params=0.75).recipe == "drop-share"  # the measured best by default


def test_a_heal_run_continues_a_built_only_one(tiny_tok, files, monkeypatch):
    """`previous`: a method whose last row is there is not rebuilt (and still sets the budget and
    the baselines' LoRA size); a rebuilt one with the same parameter count keeps its built
    evaluation, so only healing and the healed evaluation run."""
    import edgedelta.experiments.compare as cmp

    tf, txt = files
    model = make_model(len(tiny_tok), layers=6)
    kw = dict(target_params=0.8, methods=["deltallm", "shortgpt"], heal_seq_len=32, recipe="deltallm", calib_samples=4,
              calib_seq_len=32, compress={"rank_attn": 2, "rank_mlp": 2},
              eval=EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64))
    built = compare(model, tiny_tok, CompareConfig(**kw), progress=False)["rows"]
    calls = []
    real = cmp.evaluate
    monkeypatch.setattr(cmp, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    fresh = []
    healed = compare(model, tiny_tok, CompareConfig(**kw, heal_tokens=32), progress=False, original_eval=built[0]["eval"],
                     previous=built[1:], on_row=fresh.append)["rows"]
    assert [(r["method"], r["stage"]) for r in healed[1:]] == [("deltallm", "built"), ("deltallm", "healed"),
                                                              ("shortgpt", "built"), ("shortgpt", "healed")]
    assert healed[1] is built[1] and healed[3] is built[2]  # same builds: built evaluations kept
    assert len(calls) == 2 and [r["stage"] for r in fresh] == ["healed", "healed"]
    # deltallm healed in the earlier run: kept whole; shortgpt still gets its budget and LoRA size from it
    calls.clear()
    again = compare(model, tiny_tok, CompareConfig(**kw, heal_tokens=32), progress=False, original_eval=built[0]["eval"],
                    previous=healed[1:3])
    rows = {(r["method"], r["stage"]): r for r in again["rows"]}
    assert rows[("deltallm", "healed")] is healed[2] and len(calls) == 2  # shortgpt's built and healed evaluations
    assert again["budget_params"] == healed[1]["params"]
    assert rows[("shortgpt", "healed")]["heal"]["rank"] == healed[4]["heal"]["rank"]


def test_a_kept_deltallm_build_is_loaded_not_rebuilt(tiny_tok, files, monkeypatch, tmp_path):
    """build_cache: the second run at the same settings loads the first run's compressed model
    (same parameters, same evaluation, the first build's time) and compresses nothing."""
    import edgedelta.delta.compress as compress_mod
    from edgedelta.manifest import read_manifest

    tf, txt = files
    model = make_model(len(tiny_tok), layers=6)
    kw = dict(target_params=0.8, methods=["deltallm"], calib_samples=4, calib_seq_len=32, compress={"rank_attn": 2, "rank_mlp": 2},
              build_cache=str(tmp_path / "builds"),
              eval=EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64))
    first = compare(model, tiny_tok, CompareConfig(**kw), progress=False, source={"name": "tiny"})["rows"][1]
    (kept,) = (tmp_path / "builds").iterdir()
    assert read_manifest(kept)["source"] == {"name": "tiny"}  # `edgedelta distill` finds its teacher there
    monkeypatch.setattr(compress_mod, "compress", lambda *a, **k: pytest.fail("compressed again"))
    again = compare(model, tiny_tok, CompareConfig(**kw), progress=False, source={"name": "tiny"},
                    original_eval=first["eval"])["rows"][1]
    assert again["params"] == first["params"] and again["report"]["build_seconds"] == first["report"]["build_seconds"]
    assert again["eval"]["ppl"] == first["eval"]["ppl"] and "loaded_from" in again["report"]
    with pytest.raises(pytest.fail.Exception, match="compressed again"):  # other calibration rows: another build
        compare(model, tiny_tok, CompareConfig(**{**kw, "calib_samples": 3}), progress=False, source={"name": "tiny"},
                original_eval=first["eval"])


@pytest.mark.parametrize("recipe", ["deltallm", "drop-share"])
def test_every_method_heals_a_qwen2_model(tiny_tok, files, recipe):
    """Qwen2 (the 0.5B and 1.5B models' architecture) through every method, built and healed under
    both healing protocols: progressive replacement's teacher prefix included."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tf, txt = files
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tiny_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         tie_word_embeddings=True)).eval()
    methods = ["deltallm", "deltallm-drop", "shortgpt", "laco", "jointdrop", "slicegpt"]
    cfg = CompareConfig(target_params=0.8, methods=methods, heal_seq_len=32, heal_tokens=128, recipe=recipe, calib_samples=4,
                        calib_seq_len=32, compress={"rank_attn": 2, "rank_mlp": 2},
                        eval=EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64))
    rows = compare(model, tiny_tok, cfg, progress=False)["rows"]
    assert [r.get("error") for r in rows if "error" in r] == []
    healed = [r for r in rows if r["stage"] == "healed"]
    assert sorted(r["method"] for r in healed) == sorted(methods)
    assert [(r["heal"]["recipe"], r["heal"]["tokens"]) for r in healed] == [(recipe, 128)] * len(methods)
