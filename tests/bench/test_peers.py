"""bench/peers.py's pure parts: the contender table, the API checks that skip a row, same-round
ratios and the targets, the markdown page, and the perplexity protocol of its worker on a tiny
artifact (checked against edgedelta's PyTorch perplexity on the same windows)."""

import dataclasses
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedelta.export import ExportConfig
from edgedelta.runtime import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peers  # noqa: E402
import peers_worker  # noqa: E402


# ---- the table --------------------------------------------------------------------------------------
def test_default_table_parses_with_unique_labels_and_roles():
    cs = peers.parse_table(peers.EDGEDELTA) + peers.peer_contenders()
    labels = [c.label for c in cs]
    assert len(labels) == len(set(labels))
    roles = [c.role for c in cs if c.role]
    assert len(roles) == len(set(roles))
    # every role a target reads is given to some contender
    needed = {t[2] for t in peers.TARGETS} | {t[3] for t in peers.TARGETS}
    assert needed <= set(roles)


def test_cuda_table_runs_fp16_rows_against_the_genai_cuda_build():
    """--provider cuda: fp16 activations (the CUDA GroupQueryAttention kernel's), each artifact
    with and without CUDA graphs, the genai CUDA build as the reference, speed targets only."""
    cs = peers.parse_table(peers.EDGEDELTA_CUDA) + peers.peer_contenders("cuda")
    assert {c.engine for c in cs} == {"edgedelta", "genai"}
    assert all(c.export.get("dtype") == "fp16" for c in cs if c.engine == "edgedelta")
    roles = {c.role: c for c in cs if c.role}
    assert roles["genai-int4"].peer == "genai-cuda-int4" and roles["genai-int4"].session == {"cuda_graph": True}
    needed = {t[2] for t in peers.TARGETS_CUDA} | {t[3] for t in peers.TARGETS_CUDA}
    assert needed <= set(roles) and {t[1] for t in peers.TARGETS_CUDA} <= {"decode", "prefill32", "prefill512"}
    assert not {c.label for c in peers.peer_contenders("cpu")} & {c.label for c in peers.peer_contenders("cuda")}
    # every row's export fields and session kwargs exist, and its ExportConfig is accepted
    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    params = set(inspect.signature(Session.from_dir).parameters)
    for c in cs:
        if c.engine == "edgedelta":
            assert peers.check_api(c, fields, params) is None
            ExportConfig(**c.export)


def test_peers_root_gives_the_model_paths(tmp_path):
    (tmp_path / "genai-cuda-int4").mkdir()
    cs = peers.peer_contenders("cuda")
    peers.prepare_peers(cs, {}, tmp_path)
    assert all(c.path == str(tmp_path / "genai-cuda-int4") and c.skip is None for c in cs)


def test_table_rows_as_tuples_and_dicts():
    cs = peers.parse_table([
        ("a", "original", {"quantize": "int4"}, {"spin": True}),
        {"label": "b", "model": "compressed", "export": {}, "role": "compressed-int4"},
    ])
    assert [(c.label, c.model, c.export, c.session, c.role) for c in cs] == [
        ("a", "original", {"quantize": "int4"}, {"spin": True}, None), ("b", "compressed", {}, {}, "compressed-int4")]


@pytest.mark.parametrize("rows, msg", [
    ([("a", "original", {}, {}), ("a", "original", {}, {})], "duplicate label 'a'"),
    ([("a", "fp32", {}, {})], "model must be 'original' or 'compressed'"),
    ([("a", "original", {}, {}, "r"), ("b", "original", {}, {}, "r")], "role 'r' is already given"),
    ([{"label": "a", "model": "original", "exprt": {}}], "unknown key(s) ['exprt']"),
    ([("a", "original", "int4", {})], "export must be a dict"),
    (["a"], "must be (label, model, export, session[, role])"),
])
def test_bad_table_rows_are_named(rows, msg):
    with pytest.raises(ValueError, match=None) as e:
        peers.parse_table(rows)
    assert msg in str(e.value)


def test_select_by_label_and_glob():
    cs = peers.parse_table(peers.EDGEDELTA) + peers.peer_contenders()
    got = [c.label for c in peers.select(cs, "edgedelta-int4*,genai-int4")]
    assert got == ["edgedelta-int4", "edgedelta-int4-spin", "edgedelta-int4-b32-spin", "edgedelta-int4-e8-spin", "edgedelta-int4-zp-spin",
                   "edgedelta-int4-v8-spin", "edgedelta-int4-t32-spin", "edgedelta-int4-untuned-spin",
                   "edgedelta-int4-fzp-spin", "edgedelta-int4-fzp-e8-spin", "genai-int4"]
    with pytest.raises(ValueError, match="'nope' matches no contender"):
        peers.select(cs, "nope")


def test_rows_with_options_this_edgedelta_lacks_are_skipped_with_a_note():
    import dataclasses
    import inspect

    from edgedelta.export import ExportConfig
    from edgedelta.runtime import Session

    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    params = set(inspect.signature(Session.from_dir).parameters)
    ok, new_field, new_kwarg, threads = peers.parse_table([
        ("ok", "original", {"quantize": "int4", "block_size": 32}, {"spin": True}),
        ("new", "original", {"quantize": "int4", "fused_widgets": True}, {}),
        ("kw", "original", {}, {"warp_drive": 1}),
        ("thr", "original", {}, {"threads": 4}),
    ])
    assert peers.check_api(ok, fields, params) is None
    assert peers.check_api(new_field, fields, params) == "ExportConfig has no field(s) fused_widgets"
    assert peers.check_api(new_kwarg, fields, params) == "Session.from_dir has no parameter(s) warp_drive"
    assert "set by the benchmark" in peers.check_api(threads, fields, params)


def test_prepare_skips_unknown_field_and_missing_compressed_without_exporting(tmp_path):
    cs = peers.parse_table([("new", "original", {"fused_widgets": True}, {}), ("c", "compressed", {}, {})])
    notes = peers.prepare_edgedelta(cs, {"original": tmp_path / "never-read", "compressed": None}, False, root=tmp_path / "arts")
    assert notes == {} and not (tmp_path / "arts").exists()
    assert cs[0].skip == "ExportConfig has no field(s) fused_widgets" and cs[0].path is None
    assert "no compressed model" in cs[1].skip


def test_a_given_artifact_is_measured_as_is(tiny_edgedelta, tmp_path):
    _, art = tiny_edgedelta
    given, missing = peers.parse_table([{"label": "a", "model": "original", "artifact": str(art)},
                                        {"label": "b", "model": "original", "artifact": str(tmp_path)}])
    notes = peers.prepare_edgedelta([given, missing], {"original": None, "compressed": None}, False, root=tmp_path / "arts")
    assert given.skip is None and given.path == str(art)
    assert notes[str(art)]["given_artifact"] and notes[str(art)]["export_config"]["dtype"] == "fp32"
    assert missing.skip == f"artifact '{tmp_path}' has no manifest.json"
    with pytest.raises(ValueError, match="either export fields or an artifact"):
        peers.parse_table([{"label": "c", "model": "original", "export": {"quantize": "int4"}, "artifact": str(art)}])


def test_artifact_key_changes_with_fields_model_revision_and_exporter_code():
    k = peers.artifact_key("m", {"quantize": "int4"}, 9, "c")
    assert k == peers.artifact_key("m", {"quantize": "int4"}, 9, "c")
    assert len({k, peers.artifact_key("m2", {"quantize": "int4"}, 9, "c"), peers.artifact_key("m", {"quantize": "int8"}, 9, "c"),
                peers.artifact_key("m", {"quantize": "int4"}, 10, "c"), peers.artifact_key("m", {"quantize": "int4"}, 9, "d")}) == 5
    assert len(peers.exporter_code_hash()) == 64


def test_round_order_rotates():
    assert [peers.round_order(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


# ---- ratios and targets ---------------------------------------------------------------------------------
def _round(decode, p32=100.0, p512=200.0, rss=300.0):
    return {"decode": {"tokens_per_s": decode, "token_ids": [1, 2, 3]}, "prefill": {"32": {"tokens_per_s": p32}, "512": {"tokens_per_s": p512}},
            "rss_peak_decode_mib": rss, "rss_peak_all_mib": rss + 50, "load_s": 1.0}


def test_ratios_pair_rounds_and_skip_failed_ones():
    # a is exactly 2x b in every round although both drift: paired ratio 2.0, ratio of medians would not be
    rounds = {"a": [_round(100), _round(40), {"error": "x"}], "b": [_round(50), _round(20), _round(999)]}
    assert peers.paired_ratio(rounds, "a", "b", peers.METRICS["decode"][0]) == 2.0
    s = peers.summarize(rounds, {"a": {"ppl": 12.0}, "b": {"ppl": 10.0}}, {"a": 80.0, "b": 100.0}, [32, 512])
    assert s["a"]["rounds_ok"] == 2 and s["a"]["errors"] == ["x"]
    assert s["a"]["decode_tps"] == 70.0 and s["b"]["decode_tps"] == 50.0
    assert peers.ratio("file", "a", "b", rounds, s) == pytest.approx(0.8)
    assert peers.ratio("ppl", "a", "b", rounds, s) == pytest.approx(1.2)
    assert peers.ratio("decode", "a", "missing", rounds, s) is None


def test_targets_computed_and_marked():
    roles = {"compressed-int4": "c4", "original-int4": "o4", "genai-int4": "g4", "original-fp32": "o32", "genai-fp32": "g32",
             "compressed-fp32": "c32"}  # no llama-q4_1 contender
    rounds = {"c4": [_round(100, rss=180)], "o4": [_round(104, p32=90)], "g4": [_round(100)], "o32": [_round(50)], "g32": [_round(49)],
              "c32": [_round(40)]}
    files = {"c4": 77.0, "o4": 88.0, "g4": 86.0, "o32": 500.0, "g32": 540.0, "c32": 450.0}
    ppl = {"c4": {"ppl": 16.0}, "o4": {"ppl": 14.6}, "g4": {"ppl": 15.0}, "o32": {"ppl": 14.0}, "g32": {"ppl": 14.0}, "c32": {"ppl": 15.0}}
    s = peers.summarize(rounds, ppl, files, [32, 512])
    got = {t["target"]: t for t in peers.evaluate_targets(roles, rounds, s)}
    assert got["compressed int4 decode ≥ 1.0× genai int4"]["met"] is True  # 1.00 exactly
    assert got["original int4 decode ≥ 1.05× genai int4"]["met"] is False  # 1.04
    assert got["original int4 decode ≥ 1.05× genai int4"]["value"] == pytest.approx(1.04)
    assert got["compressed int4 file ≤ 0.90× genai int4"]["value"] == pytest.approx(77 / 86)
    assert got["compressed int4 peak RSS ≤ 0.90× genai int4"]["met"] is True  # 180/300
    assert got["int4 prefill@32 ≥ 1.0× genai int4"]["met"] is False  # 0.9
    assert got["int4 perplexity ≤ 1.05× float"]["met"] is True  # 14.6/14 = 1.043
    assert got["int4 perplexity below genai int4's"]["met"] is True
    assert got["compressed int4 perplexity ≤ 1.05× its float"]["met"] is False  # 16/15
    q41 = got["int4 perplexity below llama.cpp Q4_1's"]
    assert q41["met"] is None and q41["value"] is None and "llama-q4_1" in q41["note"]
    assert got["compressed/original int4 decode ≥ 0.95"]["value"] == pytest.approx(100 / 104)


def test_greedy_agreement_counts_the_common_prefix():
    r = lambda ids: {"decode": {"tokens_per_s": 1.0, "token_ids": ids}}  # noqa: E731
    rounds = {"ref": [r([1, 2, 3, 4])], "x": [r([1, 2, 9, 4])], "y": [{"error": "e"}, r([1, 2, 3, 4])]}
    assert peers.greedy_agreement(rounds, "ref") == {"ref": 4, "x": 2, "y": 4}
    assert peers.greedy_agreement(rounds, None) == {}


# ---- markdown ------------------------------------------------------------------------------------------
def _result(quick=False):
    rounds = {"edgedelta-int4": [_round(60)], "genai-int4": [_round(150)], "genai-fp32": [_round(45)]}
    summary = peers.summarize(rounds, {"edgedelta-int4": {"ppl": 14.9}}, {"edgedelta-int4": 180.0, "genai-int4": 86.5, "genai-fp32": 540.0},
                              [32, 512])
    roles = {"original-int4": "edgedelta-int4", "genai-int4": "genai-int4", "genai-fp32": "genai-fp32"}
    return {"model": "M", "json_name": "peers.json",
            "config": {"rounds": 1, "threads": 2, "new_tokens": 128, "prompt_tokens": 32, "prefill": [32, 512], "quick": quick},
            "tokens": {"ppl_text": ["python-docs", "sotu-recent"], "ppl_windows": 16, "window": 512, "ppl_scored_positions": 16 * 511},
            "order": ["edgedelta-int4", "edgedelta-new", "genai-int4", "genai-fp32"], "summary": summary, "roles": roles, "rounds": rounds,
            "greedy_agreement": {"edgedelta-int4": 17}, "targets": peers.evaluate_targets(roles, rounds, summary),
            "skipped": {"edgedelta-new": "ExportConfig has no field(s) fused_widgets"}, "machine": {"loadavg_start": [0.1, 0.2, 0.3]},
            "peers": {"genai": {"genai-int4": {"builder_command": "python -m onnxruntime_genai.models.builder -p int4"}}}, "versions": {}}


def test_markdown_has_every_measured_row_ratios_targets_and_skips():
    md = peers.render_markdown(_result())
    row = next(l for l in md.splitlines() if l.startswith("| **edgedelta-int4**"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # decode, prefill@32, prefill@512, RSS, file, ppl, ×genai-int4, ×genai-fp32, greedy
    assert cells[1:] == ["60.0", "100.0", "200.0", "300", "180.0", "14.900", "0.40", "1.33", "17"]
    assert "| original int4 decode ≥ 1.05× genai int4 | 0.400× | **missed** |" in md
    assert "| compressed int4 decode ≥ 1.0× genai int4 | no contender with role compressed-int4 | — |" in md
    assert "- edgedelta-new: ExportConfig has no field(s) fused_widgets" in md
    assert "python -m onnxruntime_genai.models.builder -p int4" in md
    assert "smoke run" not in md and "smoke run" in peers.render_markdown(_result(quick=True))


def test_plot_writes_a_png(tmp_path):
    res = _result()
    res["engines"] = {"edgedelta-int4": "edgedelta", "edgedelta-new": "edgedelta", "genai-int4": "genai", "genai-fp32": "genai"}
    peers.plot(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_fail_before_any_work(capsys):
    assert peers.main(["--rounds", "0"]) == 2
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err
    assert peers.main(["--prefill", "32,x"]) == 2
    assert "--prefill must be comma-separated integers" in capsys.readouterr().err
    assert peers.main(["--only", "nope"]) == 2
    assert "'nope' matches no contender" in capsys.readouterr().err


def test_bad_compressed_dir_is_refused(tmp_path, capsys):
    assert peers.main(["--compressed", str(tmp_path), "--only", "genai-int4"]) == 2
    assert "is not an edgedelta compressed model dir" in capsys.readouterr().err


# ---- the worker's perplexity protocol -----------------------------------------------------------------------
def test_nll_of_logits_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 50)).astype(np.float32) * 4
    ids = rng.integers(0, 50, size=9)
    s, n = peers_worker.nll_of_logits(logits, ids)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:-1]).double(), torch.from_numpy(ids[1:]), reduction="sum")
    assert n == 8 and s == pytest.approx(float(ref), rel=1e-9)


def test_worker_perplexity_equals_pytorch_on_the_same_windows(tiny_edgedelta):
    """Every window scored from an empty cache, every position after the first: the ONNX worker's
    perplexity equals edgedelta.evaluation's PyTorch perplexity over the same (n, seq) windows."""
    from edgedelta.evaluation.perplexity import perplexity_on_ids
    from edgedelta.loading import load_model

    model_dir, art = tiny_edgedelta
    vocab = json.loads((Path(art) / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (3, 24), generator=torch.Generator().manual_seed(1))
    eng = peers_worker.EdgeDelta(str(art), 1, {})
    got = peers_worker.measure_ppl(eng, {"ppl_windows": ids.tolist()})
    ref = perplexity_on_ids(load_model(model_dir).model, ids)
    assert got["scored_tokens"] == ref["tokens"] == 3 * 23
    assert got["ppl"] == pytest.approx(ref["ppl"], rel=1e-4)


def test_worker_speed_run_in_a_fresh_process(tiny_edgedelta, tmp_path):
    """The orchestrator's path end to end on the tiny artifact: one fresh worker, decode + prefill + RSS."""
    _, art = tiny_edgedelta
    tokens = {"prompt": [5, 6, 7, 8], "prefill": {"4": [5, 6, 7, 8], "16": list(range(5, 21))}, "ppl_windows": []}
    (tmp_path / "tok.json").write_text(json.dumps(tokens))
    c = peers.Contender("tiny", "edgedelta", path=str(art))
    opts = {"threads": 1, "tokens": str(tmp_path / "tok.json"), "new_tokens": 6, "prefill_reps": 2}
    r = peers.run_worker(c, {}, "speed", tmp_path, opts, timeout=120)
    assert "error" not in r, r
    assert len(r["decode"]["step_s"]) == 6 and len(r["decode"]["token_ids"]) == 7 and r["decode"]["tokens_per_s"] > 0
    assert set(r["prefill"]) == {"4", "16"} and len(r["prefill"]["16"]["s"]) == 2
    assert r["rss_peak_all_mib"] >= r["rss_peak_decode_mib"] > r["rss_after_import_mib"] > 0
    assert list(tmp_path.glob("*.json")) == [tmp_path / "tok.json"]  # spec and result files removed
    # greedy ids equal the session's own greedy loop
    from edgedelta.runtime import Session

    s = Session.from_dir(art, provider="cpu", tokenizer=None)
    cache = s.new_cache(1, 11)
    x = np.array([tokens["prompt"]])
    t = int(s.forward(x, np.ones_like(x), np.arange(4)[None], cache)[0].argmax())
    ids = [t]
    for _ in range(6):
        p = cache.length
        t = int(s.forward(np.array([[t]]), np.ones((1, p + 1), np.int64), np.array([[p]]), cache)[0].argmax())
        ids.append(t)
    assert r["decode"]["token_ids"] == ids


def test_worker_decode_with_static_decode_matches_the_growing_mask(tmp_path):
    """A session with static_decode (what cuda_graph turns on) gets its decode masks over the
    whole cache from the worker: the same greedy ids as the growing masks."""
    from tests.tiny_artifact import build_tiny_artifact

    art = build_tiny_artifact(tmp_path / "gqa", hidden=64)[1]  # GroupQueryAttention: an in-place cache
    runs = []
    for static in (False, True):
        eng = peers_worker.EdgeDelta(str(art), 1, {})
        eng.s.static_decode = static
        runs.append(eng.decode([5, 6, 7, 8], 6)[1])
    assert runs[0] == runs[1] and len(runs[0]) == 7
    assert len(eng.s._static) == 1  # the static path ran


def test_a_failing_worker_is_an_error_entry_not_a_crash(tmp_path):
    (tmp_path / "tok.json").write_text(json.dumps({"prompt": [1], "prefill": {}, "ppl_windows": []}))
    c = peers.Contender("bad", "edgedelta", path=str(tmp_path / "no-artifact"))
    r = peers.run_worker(c, {}, "speed", tmp_path, {"threads": 1, "tokens": str(tmp_path / "tok.json"), "new_tokens": 1,
                                                      "prefill_reps": 1}, timeout=120)
    assert r["error"].startswith("exit 1")
