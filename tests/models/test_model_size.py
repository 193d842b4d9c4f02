"""Stored parameters read from file headers only: a GGUF's tensor infos, a folder's
safetensors headers; and the pipeline's time estimate that scales with them."""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from edgedelta.models.gguf_header import gguf_parameter_count
from edgedelta.models.size import stored_parameters
from edgedelta.pipeline import REFERENCE_PARAMS, PipelineConfig


def _gguf_with_tensors(path, shapes):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    for i, shape in enumerate(shapes):
        w.add_tensor(f"t{i}", np.zeros(shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_parameter_count_reads_the_tensor_infos(tmp_path):
    path = _gguf_with_tensors(tmp_path / "m.gguf", [(3, 5), (7,), (2, 3, 4)])
    assert gguf_parameter_count(path) == 15 + 7 + 24
    assert stored_parameters(str(path)) == 46


def test_safetensors_folder_and_unreadable_inputs(tmp_path):
    (tmp_path / "m").mkdir()
    save_file({"a": torch.zeros(4, 6), "b": torch.zeros(10)}, tmp_path / "m" / "model-00001.safetensors")
    save_file({"c": torch.zeros(2, 2, dtype=torch.bfloat16)}, tmp_path / "m" / "model-00002.safetensors")
    assert stored_parameters(str(tmp_path / "m")) == 24 + 10 + 4
    assert stored_parameters(str(tmp_path / "missing")) is None  # nothing to read: no estimate, not a guess
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # truncated after the version
    assert stored_parameters(str(tmp_path / "bad.gguf")) is None


def test_the_time_estimate_grows_with_the_model():
    cfg = PipelineConfig.quick_config()
    assert cfg.expected_minutes() == cfg.expected_minutes(REFERENCE_PARAMS)
    assert abs(cfg.expected_minutes(10 * REFERENCE_PARAMS) - 10 * cfg.expected_minutes()) <= 1
    assert cfg.quick_twin().tokens == cfg.tokens < PipelineConfig().tokens


def test_the_estimate_matches_the_measured_quick_pipeline_at_both_sizes():
    results = Path(__file__).resolve().parents[2] / "bench" / "results"
    quick = PipelineConfig.quick_config()
    at_135m = json.loads((results / "pipeline_quick.json").read_text())["timing"]["wall_s"] / 60
    assert abs(quick.expected_minutes() / at_135m - 1) < 0.25
    rows = json.loads((results / "stages_qwen2.5-coder-1.5b.json").read_text())["stages"]
    at_15b = next(r for r in rows if r["stage"] == "pipeline")["wall_s"] / 60
    # 1,777,088,000: the tensor infos of the qwen2.5-coder-1.5b GGUF (sha256-pinned in models/registry.py)
    assert abs(quick.expected_minutes(1_777_088_000) / at_15b - 1) < 0.25
