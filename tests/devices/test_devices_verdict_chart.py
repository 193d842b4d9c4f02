"""The verdict chart (model x device coloured by fits / tight / does not fit) in the device
report, fed by virtual artifacts (no export needed)."""

from edgedelta.devices import all_devices
from edgedelta.devices import virtual as v
from edgedelta.devices.planner import plan_facts
from edgedelta.devices.report import chart_verdicts, write_report

CFG = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
       "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
       "tie_word_embeddings": False}


def _facts():
    return [v.virtual_facts(CFG, v.VirtualExport(p), name=f"qwen-1.5b-{p}") for p in ("fp32", "int4")]


def test_chart_verdicts_writes_a_png(tmp_path):
    devs = [all_devices()[n] for n in ("rpi5-2gb", "rpi5-8gb", "jetson-agx-orin-64gb")]
    cells = {(f.name, d.name, sc): plan_facts(f, d, c) for f in _facts() for d in devs for sc, c in (("2k", 2048), ("8k", 8192))}
    verdicts = {p.verdict for p in cells.values()}
    assert {"fits", "does not fit"} <= verdicts  # the chart has something to tell apart
    path = tmp_path / "v.png"
    chart_verdicts(cells, [f.name for f in _facts()], ["2k", "8k"], devs, path, changed={("qwen-1.5b-int4", "rpi5-2gb", "2k")})
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_device_report_leads_with_the_verdict_chart(tmp_path):
    devs = list(all_devices().values())
    facts = _facts()
    plans = [plan_facts(f, d, c) for f in facts for d in devs for c in (2048, 8192)]
    data = {"plans": plans, "contexts": [2048, 8192],
            "host": {"display_name": "test host", "memory_gib": 24, "bandwidth_gbps": 10.0},
            "models": [{"name": f.name, "compressed": False, "facts": f.__dict__.copy(), "calibration": None, "runs": []}
                       for f in facts]}
    md = write_report(tmp_path, data, devs).read_text()
    assert (tmp_path / "verdicts.png").is_file()
    assert md.index("verdicts.png") < md.index("memory_per_device.png")
