"""docs/RESULTS.md is what bench/summarize.py makes from the JSON files in bench/results/:
no number in it is typed by hand, and none goes stale when a benchmark writes new results."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "bench" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_doc_is_generated_from_the_json_files():
    mod = _summarize()
    assert (ROOT / "docs" / "RESULTS.md").read_text() == mod.render(), "run: python bench/summarize.py"


def test_readme_status_table_is_generated_from_the_json_files():
    mod = _summarize()
    readme = (ROOT / "README.md").read_text()
    assert readme == mod.readme_with_status(readme), "run: python bench/summarize.py"
    assert mod.STATUS_BEGIN in readme and len(readme.splitlines()) <= 200


def test_a_missing_file_is_listed_not_invented(tmp_path):
    mod = _summarize()
    text = mod.render(tmp_path)  # no result files at all
    assert text.count("Not measured yet (the file is absent).") == len(mod.SECTIONS)


def test_a_new_section_is_one_function(tmp_path, monkeypatch):
    mod = _summarize()
    (tmp_path / "serve.json").write_text(json.dumps({"p50_ms": 12.5}))
    monkeypatch.setattr(mod, "SECTIONS", [("Server", "serve.json", lambda d: [f"p50 {d['p50_ms']} ms"])])
    assert "## Server" in mod.render(tmp_path) and "p50 12.5 ms" in mod.render(tmp_path)


def test_a_missed_peer_target_is_located_from_the_measurements():
    mod = _summarize()

    def rnd(i, tps, rss):
        return {"round": i, "decode": {"tokens_per_s": tps}, "rss_after_import_mib": 28.0, "rss_peak_decode_mib": rss}

    d = {"rounds": {"ours": [rnd(0, 90.0, 200), rnd(1, 95.0, 201)], "peer": [rnd(0, 100.0, 190), rnd(1, 100.0, 190)]},
         "summary": {"ours": {"peak_rss_mib": 200.0, "file_mib": 70.0}, "peer": {"peak_rss_mib": 190.0, "file_mib": 80.0}},
         "contenders": {"ours": {"model": "compressed"}, "peer": {}},
         "targets": [{"target": "decode", "metric": "decode", "numerator": "ours", "denominator": "peer", "value": 0.925, "met": False},
                     {"target": "rss", "metric": "rss", "numerator": "ours", "denominator": "peer", "value": 1.05, "met": False},
                     {"target": "file", "metric": "file", "numerator": "ours", "denominator": "peer", "value": 0.875, "met": True}]}
    lines = mod._peer_misses(d, None)
    assert lines == ["- decode (0.925): per-round ratios 0.900, 0.950.",
                     "- rss (1.050): peak RSS beside the weight file: 130 MiB against 110 MiB (of which the process after "
                     "importing its runtime: 28 against 28 MiB); the weights save 10.0 MiB."]


def test_a_missed_int4_perplexity_names_the_head_only_rows():
    mod = _summarize()
    d = {"rounds": {}, "summary": {"int4": {"ppl": 22.5}, "float": {"ppl": 18.1}},
         "contenders": {"int4": {"model": "original"}, "float": {}},
         "targets": [{"target": "ppl", "metric": "ppl", "numerator": "int4", "denominator": "float", "value": 1.243, "met": False}]}
    zp = {"weights": {"blocks_on_q4_1_grid": 8, "blocks": 8, "rel_err_uint4_zp": 0.08},
          "kernels": [{"m": 1, "zero_points": z, "accuracy_level": 4, "us": us} for z, us in (("float", 400.0), ("uint4", 10.0))]}
    qq = {"models": {"original": {"rows": [
        {"quantize": "int4", "method": "rtn", "projections_quantized": False, "ppl_ratio": 1.086},
        {"quantize": "int8", "method": "rtn", "projections_quantized": False, "ppl_ratio": 1.0},
        {"quantize": "int4", "method": "rtn", "embedding_quantized": True, "ppl_ratio": 1.333}]}}}
    (line,) = mod._peer_misses(d, zp, qq)
    assert "run 40x slower at one token" in line
    assert "perplexity is 1.086x float at int4, 1.000x float at int8 (quant_quality.json)" in line
    assert "head" not in mod._peer_misses(d, zp, None)[0]
    assert "float zero points" not in line.split("(zero_points.json)")[1]  # no float-zero-point export measured


def test_a_missed_int4_perplexity_cites_the_float_zero_point_exports():
    """The same model's float_zero_points exports of the run, with their perplexity against the
    target's denominator, decode against genai int4 (same-round ratios) and file size."""
    mod = _summarize()
    rounds = {c: [{"round": i, "decode": {"tokens_per_s": tps * (1 + 0.01 * i)}} for i in range(3)]
              for c, tps in (("int4", 100.0), ("fzp", 80.0), ("genai", 100.0))}
    d = {"rounds": rounds, "roles": {"genai-int4": "genai"},
         "summary": {"int4": {"ppl": 22.5}, "float": {"ppl": 18.0}, "fzp": {"ppl": 18.9, "file_mib": 87.25}, "genai": {"ppl": 24.0}},
         "contenders": {"int4": {"model": "original", "path": "/a/int4"}, "float": {}, "genai": {},
                        "fzp": {"model": "original", "path": "/a/fzp"}},
         "exports": {"int4": {"export_config": {"symmetric": True}},
                     "fzp": {"export_config": {"symmetric": True, "float_zero_points": True, "embedding_bits": None}}},
         "targets": [{"target": "ppl", "metric": "ppl", "numerator": "int4", "denominator": "float", "value": 1.25, "met": False}]}
    (line,) = mod._peer_misses(d, None, None)
    assert "fzp (embedding 4-bit): perplexity 1.050x float's, decode 0.800x genai int4, file 87.2 MiB" in line
    # a float-zero-point export is a form of its own, never the symmetric form a like-with-like comparison picks
    assert mod._symmetric_of(d, "fzp") is None and mod._int4_rows(d, "original", (True,), ()) == ["int4"]


def test_a_missed_int4_decode_says_which_zero_point_form_and_cites_the_other():
    mod = _summarize()

    def rnd(i, tps):
        return {"round": i, "decode": {"tokens_per_s": tps}}

    gate = {"ppl_ratio": 1.36, "agreement": 0.693, "thresholds": {"max_ppl_ratio": 1.35, "min_agreement": 0.7}}
    d = {"rounds": {"int4": [rnd(0, 90.0), rnd(1, 92.0)], "int4-sym": [rnd(0, 99.0), rnd(1, 104.0)], "peer": [rnd(0, 100.0), rnd(1, 100.0)]},
         "summary": {"int4": {"ppl": 22.6}, "int4-sym": {"ppl": 23.9}, "peer": {"ppl": 24.3}},
         "contenders": {"int4": {"model": "original", "path": "/a/k1"}, "int4-sym": {"model": "original", "path": "/a/k2"}, "peer": {}},
         "exports": {"k1": {"export_config": {"symmetric": False}, "symmetric_choice": {"rejected": [{"quality_gate": gate}]}},
                     "k2": {"export_config": {"symmetric": True}}},
         "targets": [{"target": "decode", "metric": "decode", "numerator": "int4", "denominator": "peer", "value": 0.91, "met": False}]}
    (line,) = mod._peer_misses(d, None)
    assert line == ("- decode (0.910): per-round ratios 0.900, 0.920; exported with uint zero points because its symmetric form "
                    "missed the quality gate (perplexity ratio 1.360, argmax agreement 0.693; thresholds 1.35, 0.7); the "
                    "symmetric export of the same model (int4-sym) decodes at 1.015x here with perplexity 23.900 against "
                    "22.600 (genai int4: 24.300).")
    zp = {"decode": {"uint4_over_none": 1.116, "uint4_over_none_quartiles": [1.11, 1.123]}}
    assert mod._peer_misses(d, zp)[0].endswith("; in one process, alternating, symmetric int4 decodes 1.116x as fast as uint4 "
                                               "zero points (quartiles 1.110-1.123, zero_points.json).")
    d["targets"][0]["numerator"] = "int4-sym"  # a symmetric export cites the zero-point one, not the A/B
    line = mod._peer_misses(d, zp)[0]
    assert "exported with symmetric blocks (no zero points); the zero-point export of the same model (int4)" in line
    assert "alternating" not in line


def test_zero_points_section_reports_the_decode_ratio_and_each_forms_gate():
    mod = _summarize()
    d = {"weights": {"model": "m", "blocks_on_q4_1_grid": 0, "blocks": 10, "rel_err_uint4_zp": 0.05},
         "decode": {"model": "m", "alternations": 4, "steps": 32, "uint4_over_none": 1.1, "uint4_over_none_quartiles": [1.05, 1.15],
                    "file_mib": {"uint4": 10.0, "none": 9.5},
                    "quality_gate": {"uint4": {"ppl_ratio": 1.04, "agreement": 0.8}, "none": None}}}
    lines = mod.zero_points_section("bench/results/zp/zero_points.md")(d)
    assert lines[2].startswith("m int4, the forms") and "symmetric blocks decode 1.100x as fast as uint4 zero points (quartiles 1.050-1.150)." in lines[2]
    assert "| uint4 | 10.0 | 1.040 | 0.800 |" in lines and "| none (symmetric) | 9.5 | - | - |" in lines
    assert not any("float" in x for x in lines)  # a file without the float form: no float row, no float ratio
    assert lines[-1] == "Kernel timings and the per-tensor errors: [bench/results/zp/zero_points.md](../bench/results/zp/zero_points.md)."
    d["decode"].update({"float_over_none": 1.17, "float_over_none_quartiles": [1.16, 1.18]})
    d["decode"]["file_mib"]["float"] = 11.0
    d["decode"]["quality_gate"]["float"] = {"ppl_ratio": 1.01, "agreement": 0.9}
    lines = mod.zero_points_section("bench/results/zp/zero_points.md")(d)
    assert "float zero points (symmetric codes plus an 8-bit offset table) take 1.170x the symmetric step time (quartiles 1.160-1.180)" in lines[2]
    assert "| float (offset table) | 11.0 | 1.010 | 0.900 |" in lines


def test_a_compressed_over_original_miss_compares_like_with_like():
    """The original's default export took symmetric blocks and the compressed one zero points: the
    line gives the compressed model's ratio against the original's zero-point export too."""
    mod = _summarize()

    def rnd(i, tps):
        return {"round": i, "decode": {"tokens_per_s": tps}}

    d = {"rounds": {"comp-int4": [rnd(0, 90.0)], "orig-int4": [rnd(0, 100.0)], "orig-int4-zp": [rnd(0, 85.0)]},
         "summary": {"comp-int4": {"ppl": 40.0}, "orig-int4": {"ppl": 23.9}, "orig-int4-zp": {"ppl": 22.6}},
         "contenders": {"comp-int4": {"model": "compressed", "path": "/a/c"}, "orig-int4": {"model": "original", "path": "/a/o"},
                        "orig-int4-zp": {"model": "original", "path": "/a/z"}},
         "exports": {"c": {"export_config": {"symmetric": False}}, "o": {"export_config": {"symmetric": True}},
                     "z": {"export_config": {"symmetric": False}}},
         "targets": [{"target": "c/o", "metric": "decode", "numerator": "comp-int4", "denominator": "orig-int4", "value": 0.9, "met": False}]}
    (line,) = mod._peer_misses(d, None)
    assert line.endswith("; exported with uint zero points; orig-int4 took symmetric blocks: against the same model's zero-point "
                         "export (orig-int4-zp) the ratio is 1.059.")


def test_status_table_shows_a_third_decimal_where_two_would_read_as_the_threshold(tmp_path):
    mod = _summarize()
    targets = [{"target": "compressed int4 peak RSS ≤ 0.90× genai int4", "threshold": 0.9, "value": 0.9004, "met": False},
               {"target": "compressed int4 file ≤ 0.90× genai int4", "threshold": 0.9, "value": 0.8879, "met": True}]
    (tmp_path / "peers.json").write_text(json.dumps({"targets": targets}))
    table = mod.status_table(tmp_path)
    assert "| compressed int4 peak RSS ≤ 0.90× genai int4 | 0.900× (missed) | `peers.json` |" in table
    assert "| compressed int4 file ≤ 0.90× genai int4 | 0.89× (met) | `peers.json` |" in table


def test_status_table_shows_every_missed_peer_target_and_only_the_chosen_met_ones(tmp_path):
    mod = _summarize()
    targets = [{"target": "a target outside the chosen ones", "threshold": 1.0, "value": 1.2, "met": False},
               {"target": "another target outside them", "threshold": 1.0, "value": 0.8, "met": True},
               {"target": "one not measured", "threshold": 1.0, "value": None, "met": False}]
    (tmp_path / "peers.json").write_text(json.dumps({"targets": targets}))
    table = mod.status_table(tmp_path)
    assert "| a target outside the chosen ones | 1.20× (missed) | `peers.json` |" in table
    assert "another target outside them" not in table and "one not measured" not in table


def test_ab_note_compares_the_export_that_differs_in_that_option_only():
    mod = _summarize()

    def rnd(tps):
        return {"round": 0, "decode": {"tokens_per_s": tps}}

    base = {"quantize": "int4", "symmetric": True, "embedding_block_size": 32}
    d = {"rounds": {"v8": [rnd(94.0)], "v4": [rnd(100.0)], "v4zp": [rnd(99.0)], "other": [rnd(50.0)]},
         "summary": {"v8": {"ppl": 21.4}, "v4": {"ppl": 22.8}, "v4zp": {"ppl": 22.7}, "other": {"ppl": 30.0}},
         "contenders": {"v8": {"model": "original", "path": "/a/8"}, "v4": {"model": "original", "path": "/a/4"},
                        "v4zp": {"model": "original", "path": "/a/4zp"}, "other": {"model": "compressed", "path": "/a/c"}},
         "exports": {"8": {"export_config": {**base, "value_bits": 8}}, "4": {"export_config": {**base, "value_bits": 4}},
                     "4zp": {"export_config": {**base, "value_bits": 4, "symmetric": False}},
                     "c": {"export_config": {**base, "value_bits": 4}}}}
    assert mod._ab_note(d, "v8", *mod.AB_OPTIONS[0]) == (
        "; with the value projection at 8 bits (this export) against 4 (v4): perplexity 21.400 against 22.800, decode 0.940x")
    assert mod._ab_note(d, "other", *mod.AB_OPTIONS[0]) == ""  # no other form of the compressed model
    assert mod._ab_note(d, "v8", *mod.AB_OPTIONS[1]) == ""  # every export here has the table in blocks of 32
    d["exports"]["4"]["export_config"]["embedding_block_size"] = 64  # v4 now differs in two options: no A/B left
    assert mod._ab_note(d, "v8", *mod.AB_OPTIONS[0]) == ""


def test_a_missed_int4_perplexity_cites_the_parts_at_8_bits_of_the_same_form():
    """bench/quant_sensitivity.py's best kind, best layer and all-8-bit rows are cited for the
    int4 export of the same form (block, v bits, symmetric), and for no other form."""
    mod = _summarize()

    def row(name, group, ratio, mib=0.0):
        return {"row": name, "group": group, "ratio": ratio, "kl": 0.1, "added_mib": mib}

    qs = {"model": "m", "export": {"block_size": 64, "value_bits": 8, "symmetric": True, "method": "gptq"},
          "rows": [row("default", "default", 1.155), row("all 8-bit", "all", 1.0007, 60.0), row("kind up", "kind", 1.129, 7.5),
                   row("kind down", "kind", 1.108, 7.5), row("layer 0", "layer", 1.143, 1.5), row("layer 1", "layer", 1.150, 1.5),
                   row("layer 2", "layer", 1.152, 1.5)]}
    cfg = {"quantize": "int4", "block_size": 64, "value_bits": 8, "symmetric": True, "embedding_bits": None}
    d = {"rounds": {}, "summary": {"int4": {"ppl": 21.4, "file_mib": 74.2}, "float": {"ppl": 18.2}},
         "contenders": {"int4": {"model": "original", "path": "/a/k"}, "float": {}}, "exports": {"k": {"export_config": cfg}},
         "targets": [{"target": "ppl", "metric": "ppl", "numerator": "int4", "denominator": "float", "value": 1.18, "met": False}]}
    zp = {"weights": {"blocks_on_q4_1_grid": 8, "blocks": 8, "rel_err_uint4_zp": 0.08},
          "kernels": [{"m": 1, "zero_points": z, "accuracy_level": 4, "us": us} for z, us in (("float", 400.0), ("uint4", 10.0))]}
    (line,) = mod._peer_misses(d, zp, None, {"original": ("qs.json", qs)})
    assert ("one part at a time at 8 bits gives at best 1.108x (every down projection, +7.5 MiB) and 1.143x for the best single layer, "
            "against 1.0007x with every weight at 8 bits (qs.json)") in line
    for other in ({"block_size": 32}, {"value_bits": 4}, {"symmetric": False}, {"embedding_bits": 8}, {"float_zero_points": True}):
        d["exports"]["k"]["export_config"] = {**cfg, **other}
        assert "qs.json" not in "".join(mod._peer_misses(d, zp, None, {"original": ("qs.json", qs)})), other
    d["exports"]["k"]["export_config"] = cfg
    d["contenders"]["int4"]["model"] = "compressed"  # the compressed model's file is cited for its own export only
    assert "qs.json" not in "".join(mod._peer_misses(d, zp, None, {"original": ("qs.json", qs)}))
    assert "every down projection, +7.5 MiB" in mod._peer_misses(d, zp, None, {"compressed": ("qs.json", qs)})[0]
    section = "\n".join(mod.quant_sensitivity_section("quant_sensitivity")(qs))
    assert "the best kind, every down projection, gives 1.108x (+7.5 MiB); the best single layer, 0, 1.143x; the median layer 1.150x" in section


def test_a_missed_int4_perplexity_gives_the_decode_of_the_q4_1_block_width():
    """Holding the GGUF's Q4_1 blocks needs their width: the note gives the same model's symmetric
    export of that width (no offset table) against genai int4, and the decode target it is read against."""
    mod = _summarize()

    def rnd(tps):
        return {"round": 0, "decode": {"tokens_per_s": tps}}

    cfg = {"quantize": "int4", "block_size": 64, "symmetric": True}
    d = {"rounds": {"int4": [rnd(105.0)], "b32": [rnd(98.0)], "fzp": [rnd(70.0)], "genai": [rnd(100.0)]},
         "summary": {n: {"ppl": p, "file_mib": 80.0} for n, p in (("int4", 21.4), ("b32", 20.6), ("fzp", 19.0), ("float", 18.2))},
         "contenders": {"int4": {"model": "original", "path": "/a/k"}, "b32": {"model": "original", "path": "/a/b"},
                        "fzp": {"model": "original", "path": "/a/f"}, "genai": {}, "float": {}},
         "exports": {"k": {"export_config": cfg}, "b": {"export_config": {**cfg, "block_size": 32}},
                     "f": {"export_config": {**cfg, "block_size": 32, "float_zero_points": True}}},
         "roles": {"genai-int4": "genai"},
         "targets": [{"target": "decode", "metric": "decode", "numerator": "int4", "denominator": "genai", "threshold": 1.05,
                      "value": 1.05, "met": True},
                     {"target": "ppl", "metric": "ppl", "numerator": "int4", "denominator": "float", "value": 1.18, "met": False}]}
    zp = {"weights": {"blocks_on_q4_1_grid": 8, "blocks": 8, "rel_err_uint4_zp": 0.08},
          "kernels": [{"m": 1, "zero_points": z, "accuracy_level": 4, "us": us} for z, us in (("float", 400.0), ("uint4", 10.0))]}
    (line,) = mod._peer_misses(d, zp)
    assert line.endswith("; holding the Q4_1 blocks needs blocks of 32, and in blocks of 32 even symmetric codes with no offset "
                         "table (b32) decode at 0.980x genai int4 in this run, against the 1.05x this export's decode target asks.")
    d["exports"]["b"]["export_config"]["block_size"] = 16  # no export of the Q4_1 width: no note
    assert "holding the Q4_1 blocks" not in mod._peer_misses(d, zp)[0]


def test_tuning_ab_compares_each_tuned_export_with_its_untuned_twin():
    mod = _summarize()

    def rnd(tps):
        return {"round": 0, "decode": {"tokens_per_s": tps}}

    cfg = {"quantize": "int4", "block_size": 64, "symmetric": True, "tune_steps": 0}
    d = {"config": {"rounds": 1}, "roles": {"genai-int4": "genai", "original-fp32": "fp32"},
         "rounds": {"int4": [rnd(100.0)], "tuned": [rnd(99.0)], "comp-tuned": [rnd(120.0)], "genai": [rnd(95.0)]},
         "summary": {n: {"ppl": p, "file_mib": 74.0} for n, p in (("int4", 21.4), ("tuned", 20.5), ("comp-tuned", 40.0), ("genai", 24.2),
                                                                  ("fp32", 18.0))},
         "ratios": {"int4": {"genai-int4": {"decode": 1.05}}, "tuned": {"genai-int4": {"decode": 1.04}}},
         "contenders": {"int4": {"model": "original", "path": "/a/i"}, "tuned": {"model": "original", "path": "/a/t"},
                        "comp-tuned": {"model": "compressed", "path": "/a/c"}, "genai": {}, "fp32": {"model": "original"}},
         "exports": {"i": {"export_config": cfg}, "t": {"export_config": {**cfg, "tune_steps": 50}},
                     "c": {"export_config": {**cfg, "tune_steps": 50}}}}
    lines = mod.tuning_ab(d)
    notes = [x for x in lines if x.startswith("- ")]
    assert notes == ["- tuned (50 steps) against int4: perplexity 20.500 against 21.400 (0.958x; 1.139x against 1.189x the float "
                     "model's (fp32)), decode 0.990x, file 74.0 against 74.0 MiB"]
    d["contenders"]["int4"]["session"] = {"spin": "off"}  # a twin run with other session options is no partner
    assert mod.tuning_ab(d) == ["No tuned export with an untuned twin in this run."]
    del d["contenders"]["int4"]["session"]
    d["exports"]["i"]["export_config"]["block_size"] = 32  # no twin differs in tune_steps only
    assert mod.tuning_ab(d) == ["No tuned export with an untuned twin in this run."]


def test_scale_tuning_section_reads_the_rows_at_the_exports_rate():
    mod = _summarize()
    from edgedelta.export.scale_tuning import TUNE_LR

    def row(lr, steps, ratio):
        return {"lr": lr, "steps": steps, "ratio": ratio, "kl": ratio - 1, "seconds": 10.0 * steps}

    d = {"model": "m", "export": {"method": "gptq", "block_size": 64, "value_bits": 8},
         "rows": [row(None, 0, 1.15), row(TUNE_LR / 4, 50, 1.12), row(TUNE_LR, 50, 1.11), row(TUNE_LR * 4, 50, 1.09)]}
    text = mod.scale_tuning(d)[0]
    assert text.endswith(f"at the export's learning rate ({TUNE_LR:g}) 50 steps give 1.1100x (KL 0.1100, 500 s); "
                         f"the best row is 50 steps at {TUNE_LR * 4:g}, 1.0900x.")
