"""Plan a model before exporting it: a "virtual artifact" whose byte accounting follows the
exporter's layout rules, from a transformers config and an export precision.

Exporting a 1.5B model takes minutes and gigabytes; deciding which precision and whether to
compress, per device, needs only the bytes. The rules (export/weights.py, graph revision 9):

    projection, fp32     (in, out) float32: 4 B/param
    projection, int8/int4  MatMulNBits, blocks of `block` along the input (K, padded up;
                         block 16 when K < block): packed N·nb·block·bits/8, scales N·nb·4
                         (fp32 activations), zero points N·nb (int8) or N·ceil(nb/2) (int4);
                         symmetric blocks store none (VirtualExport.symmetric: off by default,
                         since an export on symmetric auto may keep them, and counting them
                         errs toward fitting less); float zero points (VirtualExport.float_zp,
                         projections and bases whose K is whole blocks): symmetric codes plus an
                         8-bit offset table, N·nbc·bc codes + N·nbc·4 scales (bc =
                         export.quantize.offset_block(nb), nbc = ceil(nb/bc))
    q/k/v, gate/up       fused into one (ΣN, K) weight: the same bytes as the parts, since
                         blocks run along K; a fused delta's B is block-diagonal (ΣN, ΣR).
                         With v at other bits (VirtualExport.value_bits; the exporter's default
                         is the projections' bits) q and k are one fused weight and v a second, at its bits
    embedding            fp32 (vocab, hidden), or quantized like a projection in a quantized
                         export (`embedding`: int8/int4 as ExportConfig.embedding_bits, which an
                         untied LM head follows too) in blocks of VirtualExport.embedding_block_size
                         (the exporter's default: the projections' block); read one row per token by a Gather
    LM head              tied: the embedding table, read whole per token; untied: a projection
    norms, biases        fp32; GroupQueryAttention's rope: inv_freq (head_dim/2) fp32 in the
                         file, its cos/sin tables (2 x max_positions x head_dim/2 fp32) built
                         by ONNX Runtime at load, in memory only
    shared bases         stored once per group, read once per layer of the group; the anchor
                         layer has no delta, each other layer a delta A (r, K), B (N, r)

bytes read per token follows runtime.artifact.graph_facts (each initializer once per reading
node; a Gather reads one row). The graph's few Constant nodes (shape vectors, a few hundred
bytes) are not counted. tests/devices/test_devices_virtual.py checks every figure against
real tiny exports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgedelta.errors import ConfigError
from edgedelta.export.quantize import BITS

from .planner import ModelFacts

PRECISIONS = ("fp32", "int8", "int4")
EMBEDDINGS = ("same", "fp32", "int8", "int4")  # the export's precision, float, or ExportConfig.embedding_bits
_ATTN, _MLP = ("q", "k", "v", "o"), ("gate", "up", "down")
_FUSED = (("q", "k", "v"), ("gate", "up"))
_BIASED = {"qwen2": ("q", "k", "v")}  # projections with a bias, by model_type


@dataclass(frozen=True)
class VirtualSharing:
    """A DeltaLLM plan in numbers: `groups` groups of `group_size` consecutive layers share
    `projections`, each non-anchor layer with a rank-`ranks[p]` delta."""

    groups: int
    ranks: dict[str, int]
    group_size: int = 2
    anchored: bool = True  # one layer per group is the base itself (no delta)
    projections: tuple[str, ...] = _ATTN + _MLP


@dataclass(frozen=True)
class VirtualExport:
    precision: str = "fp32"
    block_size: int | None = None  # None: the exporter's default (export.config.default_block_size)
    symmetric: bool = False  # quantized blocks without zero points (ExportConfig.symmetric)
    float_zp: bool = False  # ExportConfig.float_zero_points (implies symmetric codes)
    embedding: str = "same"  # see EMBEDDINGS
    value_bits: int | None = None  # ExportConfig.value_bits; None: the exporter's default for a quantized export
    embedding_block_size: int | None = None  # ExportConfig.embedding_block_size; None: the exporter's default
    sharing: VirtualSharing | None = None
    name: str = ""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' is not supported; allowed: {', '.join(PRECISIONS)}")
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(f"embedding '{self.embedding}' is not supported; allowed: {', '.join(EMBEDDINGS)}")
        if self.block_size is None:
            from edgedelta.export.config import default_block_size

            object.__setattr__(self, "block_size", default_block_size(self.precision, self.float_zp))
        if self.embedding_block_size is None:  # the exporter's default: the projections' block
            object.__setattr__(self, "embedding_block_size", self.block_size)
        if self.value_bits is None and self.precision != "fp32":
            object.__setattr__(self, "value_bits", BITS[self.precision])  # the exporter's default: the projections' bits
        if self.value_bits not in (None, 4, 8) or (self.value_bits is not None and self.precision == "fp32"):
            raise ConfigError(f"value_bits {self.value_bits!r} is not supported with precision {self.precision}; "
                              "allowed: 4 or 8 with int8/int4")


@dataclass
class Accounting:
    stored: dict[str, int] = field(default_factory=dict)  # kind -> bytes (export/artifact_audit.py kinds)
    read: int = 0

    def add(self, kind: str, stored: int, read: int) -> None:
        self.stored[kind] = self.stored.get(kind, 0) + stored
        self.read += read

    @property
    def total(self) -> int:
        return sum(self.stored.values())


def matrix_bytes(n: int, k: int, precision: str, block_size: int = 32, symmetric: bool = False, float_zp: bool = False) -> int:
    """Bytes of one (N=out, K=in) weight as the exporter stores it (float_zp: where the
    exporter gives it float zero points, i.e. K whole blocks)."""
    if precision == "fp32":
        return 4 * n * k
    bits = BITS[precision]
    block = block_size if k >= block_size else 16
    nb = -(-k // block)
    offsets = 0
    if float_zp and k % block == 0:
        from edgedelta.export.quantize import offset_block

        bc = offset_block(nb)
        nbc = -(-nb // bc)
        offsets = n * nbc * bc + n * nbc * 4
    zp = 0 if symmetric or float_zp else n * nb if bits == 8 else n * -(-nb // 2)  # float_zp: every code symmetric
    return n * nb * block * bits // 8 + n * nb * 4 + zp + offsets


def _shapes(c: dict) -> dict[str, tuple[int, int]]:
    h, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or h // heads)
    return {"q": (heads * hd, h), "k": (kv * hd, h), "v": (kv * hd, h), "o": (h, heads * hd),
            "gate": (inter, h), "up": (inter, h), "down": (h, inter)}


def account(config: dict, x: VirtualExport) -> Accounting:
    """Stored bytes by kind and bytes read per token for `config` exported as `x`."""
    c = config
    h, vocab, layers = int(c["hidden_size"]), int(c["vocab_size"]), int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    hd = int(c.get("head_dim") or h // heads)
    shapes = _shapes(c)
    tied = bool(c.get("tie_word_embeddings", False))
    acc = Accounting()
    emb_prec = x.precision if x.embedding == "same" else x.embedding
    sym = x.symmetric or x.float_zp  # weights without float zero points keep symmetric codes
    table = matrix_bytes(vocab, h, emb_prec, x.embedding_block_size, sym)
    acc.add("embedding", table, table // vocab + (table if tied else 0))  # Gather: one row; tied head: all
    if not tied:  # an untied head is a projection at the embedding's bits (ExportConfig.embedding_bits)
        head_prec = emb_prec if x.embedding in ("int8", "int4") and x.precision != "fp32" else x.precision
        head = matrix_bytes(vocab, h, head_prec, x.embedding_block_size, sym, x.float_zp)
        acc.add("lm_head", head, head)
    for p in _BIASED.get(c.get("model_type"), ()):
        acc.add("bias", 4 * shapes[p][0] * layers, 4 * shapes[p][0] * layers)
    acc.add("norm", 4 * h * (2 * layers + 1), 4 * h * (2 * layers + 1))
    max_pos = int(c.get("max_position_embeddings") or 0)
    if max_pos and hd % 16 == 0:  # GroupQueryAttention's rope: inv_freq (hd/2,) fp32 in the file
        acc.add("other", 4 * (hd // 2), 4 * (hd // 2))
    s = x.sharing
    shared = set(s.projections) if s else set()
    n_shared_layers = s.groups * s.group_size if s else 0
    n_delta_layers = s.groups * (s.group_size - 1 if s.anchored else s.group_size) if s else 0
    # v at other bits than the rest (ExportConfig.value_bits): q, k and v each their own weight
    v_prec = next((prec for prec, bits in BITS.items() if bits == x.value_bits), x.precision)
    groups = [("q",), ("k",), ("v",), *_FUSED[1:]] if v_prec != x.precision else list(_FUSED)
    for fused in [*groups, ("o",), ("down",)]:
        n = sum(shapes[p][0] for p in fused)
        k = shapes[fused[0]][1]
        prec = v_prec if fused == ("v",) else x.precision
        w = matrix_bytes(n, k, prec, x.block_size, sym, x.float_zp)
        if shared and set(fused) <= shared:
            # shared layers: one base per group, read by each of its layers; the rest as usual
            acc.add("shared", w * s.groups, w * n_shared_layers)
            acc.add("projection", w * (layers - n_shared_layers), w * (layers - n_shared_layers))
            r = sum(s.ranks[p] for p in fused)
            # deltas: A (ΣR, K) and block-diagonal B (ΣN, ΣR), quantized like the bases
            d = matrix_bytes(r, k, prec, x.block_size, sym) + matrix_bytes(n, r, prec, x.block_size, sym)
            acc.add("delta", d * n_delta_layers, d * n_delta_layers)
        else:
            acc.add("projection", w * layers, w * layers)
    return acc


def virtual_facts(config: dict, x: VirtualExport, name: str | None = None) -> ModelFacts:
    """ModelFacts for plan_facts(), as facts_of() would give for the exported artifact: fp32
    KV cache in one in-place buffer and GroupQueryAttention where the exporter's attention
    'auto' chooses it (a head_dim of whole 16s and a known max_positions), the LM head on a
    prefill's last position (the graph's logits_to_keep)."""
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise ConfigError(f"config field '{key}' must be a positive integer to plan a virtual artifact, got {config.get(key)!r}")
    acc = account(config, x)
    h, heads = config["hidden_size"], config["num_attention_heads"]
    hd = int(config.get("head_dim") or h // heads)
    max_pos = config.get("max_position_embeddings")
    gqa = bool(max_pos) and hd % 16 == 0
    return ModelFacts(
        name=name or x.name or f"{config.get('model_type', 'model')}-{x.precision}", weight_bytes=acc.total,
        weight_bytes_read_per_token=acc.read, num_layers=config["num_hidden_layers"],
        kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=hd, kv_itemsize=4, vocab_size=config["vocab_size"],
        hidden_size=h, intermediate_size=config["intermediate_size"], num_heads=heads,
        max_positions=int(max_pos) if max_pos else None, compressed=x.sharing is not None,
        kv_buffers=1 if gqa else 2, sliding_windows=_layer_windows(config), last_logits_only=True, fused_attention=gqa)


def _layer_windows(config: dict) -> tuple[int | None, ...]:
    """Per layer its sliding window, by the model type's adapter (as the exporter reads it)."""
    if not config.get("sliding_window"):
        return ()
    from edgedelta.models.adapters import ADAPTERS  # torch: only for configs with a window

    adapter = ADAPTERS.get(config.get("model_type"))
    return adapter.layer_windows(config) if adapter else ()


def sharing_for_budget(config: dict, target_params: float, ranks: dict[str, int], group_size: int = 2,
                       anchored: bool = True) -> tuple[VirtualSharing, int, int]:
    """The planner's parameter arithmetic (delta/plan.py plan_budget, compress.group_savings)
    on a config: the fewest groups that keep at most `target_params` of the parameters at
    the starting `ranks`, then every rank raised by a common factor while those groups still
    meet the budget. Returns (sharing, original params, compressed params). Gates and base
    scales (one scalar per layer and projection) are counted as the planner counts them."""
    shapes = _shapes(config)
    original = parameter_count(config)
    need = (1.0 - target_params) * original
    proj = list(shapes)

    def savings(rk):
        with_delta = group_size - 1 if anchored else group_size
        saved = 0
        for p in proj:
            out_f, in_f = shapes[p]
            saved += (group_size - 1) * out_f * in_f - with_delta * rk[p] * (out_f + in_f)
            saved -= group_size if p in ("o", "down") else 0  # gates
            saved -= group_size  # base scales
        return saved

    per = savings(ranks)
    layers = int(config["num_hidden_layers"])
    if per <= 0 or (layers // group_size) * per < need:
        raise ConfigError(f"target_params {target_params} cannot be reached by sharing at ranks {ranks}")
    k = math.ceil(need / per)
    best = dict(ranks)
    for step in range(1, 400):  # plan._spend_slack
        trial = {p: int(round(r * (1.0 + step * 0.01))) for p, r in ranks.items()}
        if k * savings(trial) < need:
            break
        best = trial
    return VirtualSharing(k, best, group_size, anchored), original, original - k * savings(best)


def parameter_count(config: dict) -> int:
    """Parameters of a Llama/Qwen2-style decoder from its config (embedding, head if untied,
    projections, biases, norms)."""
    shapes = _shapes(config)
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    per_layer = sum(n * k for n, k in shapes.values()) + 2 * h
    per_layer += sum(shapes[p][0] for p in _BIASED.get(config.get("model_type"), ()))
    tied = bool(config.get("tie_word_embeddings", False))
    return vocab * h * (1 if tied else 2) + layers * per_layer + h
