"""bench/embedding_lookup.py: the GatherBlockQuantized graph reads the exported packed table and
gives the exported graph's logits, with and without zero points; its report reads the JSON."""

import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import embedding_lookup  # noqa: E402


def test_gbq_graph_reads_the_same_table_and_gives_the_same_logits(tmp_path, monkeypatch):
    from tests.tiny import tiny_model, tiny_tokenizer

    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    monkeypatch.setattr(embedding_lookup, "WORK", tmp_path / "work")
    arts = embedding_lookup.artifacts(str(src))
    assert set(arts) == {"int4", "int4-zp"}
    for kind, forms in arts.items():
        g = onnx.load(forms["gbq"] / "model.onnx", load_external_data=False).graph
        gbq = [n for n in g.node if n.op_type == "GatherBlockQuantized"]
        assert len(gbq) == 1 and gbq[0].input[0] == embedding_lookup.TABLE
        assert (len(gbq[0].input) == 4) == (kind == "int4-zp")  # unpacked zero points only where the blocks have them
        # the lookup's dequantizing ops are gone; the LM head still reads the same packed table
        assert not [n for n in g.node if n.op_type in ("BitShift", "BitwiseAnd")]
        assert [n for n in g.node if n.op_type == "MatMulNBits" and n.input[1] == embedding_lookup.TABLE]
        assert (forms["gbq"] / "model.onnx.data").read_bytes() == (forms["dequantize"] / "model.onnx.data").read_bytes()
        assert embedding_lookup.parity(forms, threads=1) < 1e-5
    d = embedding_lookup.decode_ab(arts["int4"], threads=1, alternations=2, steps=2)
    assert d["gbq_over_dequantize"] > 0 and len(d["quartiles"]) == 2


def test_report_rows_per_export_and_prompt():
    figs = {"decode_ms": 5.0, "decode_peak_mib": 100.0, "prefill_tok_s": 500.0, "prefill_peak_mib": 200.0,
            "rss_after_prefill_mib": 110.0}
    proc = {"median": {"dequantize": figs, "gbq": {**figs, "prefill_peak_mib": 210.0}},
            "gbq_over_dequantize": {**{k: 1.0 for k in figs}, "prefill_peak_mib": 1.05}}
    res = {"model": "default", "threads": 2, "rounds": 3, "onnxruntime": "x",
           "kinds": {"int4": {"max_abs_logit_diff": 0.0, "decode": {"gbq_over_dequantize": 0.98, "quartiles": [0.97, 0.99]},
                              "process": {"512": proc, "2048": proc}}}}
    md = embedding_lookup.report(res)
    assert "| int4 | 0.0e+00 | 0.980 (0.970-0.990) | 512 tokens | 1.000 | 1.050 | 200 → 210 | 1.000 | 1.000 |" in md
    assert "| | | | 2048 tokens | 1.000 | 1.050 | 200 → 210 | 1.000 | 1.000 |" in md
