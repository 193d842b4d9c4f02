"""bench/quant_sensitivity.py on tiny models: the rows it measures (each kind and layer once,
v already at 8 bits left out, a shared base moved by every reader's layer row) and a full run
that writes JSON, md and a chart."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quant_sensitivity as qs  # noqa: E402
from tiny import tiny_model  # noqa: E402
from tiny_compressed import tiny_compressed_model, tiny_model_dir  # noqa: E402


def test_rows_cover_each_kind_and_layer_and_skip_parts_already_at_8_bits():
    model = tiny_model("llama")
    tensors = qs.quantized_tensors(model)
    n = model.config.num_hidden_layers
    rows = {name: (group, moved) for name, group, moved in qs.rows_to_measure(tensors, 8, n)}
    assert rows["default"] == ("default", set())
    assert "kind v" not in rows  # v already at 8 bits (value_bits 8): its row would move nothing
    assert {r for r in rows if r.startswith("kind ")} == {f"kind {k}" for k in ("q", "k", "o", "gate", "up", "down", qs.TABLE)}
    assert [r for r in rows if r.startswith("layer ")] == [f"layer {i}" for i in range(n)]
    # every tensor below 8 bits is in exactly one kind row, and all of them in the all-8-bit row
    kind_sets = [moved for name, (group, moved) in rows.items() if group == "kind"]
    assert sum(len(s) for s in kind_sets) == len(set().union(*kind_sets)) == len(rows["all 8-bit"][1])
    assert {tensors[i]["kind"] for i in rows["all 8-bit"][1]} == {"q", "k", "o", "gate", "up", "down", qs.TABLE}
    # with v at 4 bits it gets its own row
    assert "kind v" in {name for name, _, _ in qs.rows_to_measure(tensors, 4, n)}


def test_an_untied_lm_head_is_part_of_the_table():
    import torch
    from transformers import AutoModelForCausalLM

    from tiny import tiny_config

    cfg = tiny_config("qwen2", 4, 128, 32)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    table = [t["param"] for t in qs.quantized_tensors(model) if t["kind"] == qs.TABLE]
    assert len(table) == 2 and table[1] is model.get_output_embeddings().weight and table[0] is not table[1]


def test_a_shared_base_is_listed_once_and_moves_with_each_reader_layer():
    model = tiny_compressed_model("llama", groups=((0, 1), (2, 3)))
    tensors = qs.quantized_tensors(model)
    q_bases = [t for t in tensors if t["kind"] == "q"]
    assert [sorted(t["layers"]) for t in q_bases] == [[0, 1], [2, 3]]  # one base per group, read by both layers
    assert sum(t["kind"] == qs.DELTA for t in tensors) == 2 * 7 * 4  # A and B of 7 projections in 4 layers
    rows = {name: moved for name, _, moved in qs.rows_to_measure(tensors, 8, 4)}
    base0 = tensors.index(q_bases[0])
    assert base0 in rows["layer 0"] and base0 in rows["layer 1"] and base0 not in rows["layer 2"]


def test_run_writes_json_md_and_chart(tmp_path):
    src = tiny_model_dir(tmp_path / "tiny", "llama", hidden=64)
    out = tmp_path / "out"
    assert qs.main(["--model", str(src), "--ppl-tokens", "512", "--out", str(out)]) == 0
    res = json.loads((out / "quant_sensitivity_tiny.json").read_text())
    by = {r["row"]: r for r in res["rows"]}
    assert res["export"]["bits"] == 4 and res["export"]["value_bits"] == 4 and res["export"]["symmetric"] is True
    assert "kind v" in by  # v at the default 4 bits has its own row
    assert by["default"]["added_mib"] == 0
    # 8-bit codes sit closer to the float weights than 4-bit ones: the outputs move less. (A random
    # model's perplexity may move either way; KL to the float model only grows with the error.)
    assert 0 < by["all 8-bit"]["kl"] < by["kind down"]["kl"] <= by["default"]["kl"]
    assert by["default"]["ratio"] != 1.0
    assert by["all 8-bit"]["added_mib"] > by["kind down"]["added_mib"] > 0
    assert len([r for r in res["rows"] if r["group"] == "layer"]) == res["layers"]
    md = (out / "quant_sensitivity_tiny.md").read_text()
    assert "| all 8-bit |" in md and "| layer 0 |" in md
    assert (out / "quant_sensitivity_tiny.png").stat().st_size > 0
