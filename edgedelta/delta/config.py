"""CompressConfig: what shares with what, and how the shared base and deltas are initialised.
Validated on construction; written into the output's manifest and config.json as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..configio import config_from_dict, config_from_json_file
from ..data.text import DEFAULT_TRAIN_TEXT, check_training_text
from ..errors import ConfigError

BASES = ("anchor", "first", "mean", "alternating")
INITS = ("svd", "asvd")
ALL_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up")
CONFIG_VERSION = 1
DROP_AUTO = "auto"  # drop_layers: search the count (drop_search.py)


def check_drop_layers(value, least: int = 0) -> None:
    """drop_layers is a whole number >= least or 'auto'."""
    if value != DROP_AUTO and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"drop_layers must be a whole number >= {least} or '{DROP_AUTO}', got {value!r}")


@dataclass
class CompressConfig:
    groups: list[list[int]] | None = field(
        default=None, metadata={"help": "explicit sharing groups of consecutive layer indices, e.g. [[2,3],[5,6,7]]"})
    layer_range: tuple[int, int] | None = field(
        default=None, metadata={"help": "[start, end) layers to cut into groups of group_size (used if groups is None)"})
    group_size: int = field(default=2, metadata={"help": "layers per group with layer_range"})
    target_params: float | None = field(
        default=None, metadata={"help": "budget mode: keep this fraction of the unique parameters (0<f<1); the planner chooses groups"})
    # Removal before sharing (bench/results/recovery_mixed_e.md): on SmolLM2-135M at 12% removing
    # the 3 near-identity layers and sharing pairs for the rest beats either method alone before training
    drop_layers: int | str = field(default=0, metadata={
        "help": "first remove this many whole layers, the least influential (ShortGPT's block influence on calibration "
                "text), then share: with target_params the sharing plan covers what the removal leaves of the budget. "
                f"'{DROP_AUTO}' (needs target_params) builds the budget with every count and keeps the one closest to the "
                "original (lowest KL on held-out calibration text): one compression per count"})
    drop_search_max: int | None = field(default=None, metadata={
        "help": f"drop_layers '{DROP_AUTO}': the most layers tried (default: every count the budget allows)"})
    drop_search_samples: int = field(default=16, metadata={
        "help": f"drop_layers '{DROP_AUTO}': held-out sequences of calibration text each count is judged on "
                "(a separate draw, never used to fit)"})
    share_attn: bool = field(default=True, metadata={"help": "share attention projections (q, k, v, o / qkv)"})
    share_mlp: bool = field(default=True, metadata={"help": "share MLP projections (gate, up, down / gate_up)"})
    projections: list[str] | None = field(
        default=None, metadata={"help": "explicit projection short names to share (overrides share_attn/share_mlp)"})
    rank_attn: int = field(default=32, metadata={"help": "delta rank for attention projections"})
    rank_mlp: int = field(default=32, metadata={"help": "delta rank for MLP projections"})
    ranks: dict[str, int] = field(default_factory=dict, metadata={"help": "per-projection rank overrides, e.g. {'down': 64}"})
    # An anchor base measured best before training on SmolLM2-135M at 12% (bench/results/compress_init.md): the
    # anchor layer stays exact and all delta rank goes to the layers it stands in for
    base: str = field(default="anchor", metadata={
        "help": f"shared base: one of {BASES}; anchor = the group's most influential layer (block influence on "
                "calibration text), first = its first layer; either stays exact and carries no delta"})
    init: str = field(default="asvd", metadata={"help": f"delta init: one of {INITS} (asvd = whitened by calibration input covariance)"})
    gates: bool = field(default=True, metadata={
        "help": "per-layer sub-layer gates (on shared o/down), least-squares fitted on real sub-layer outputs"})
    scale_base: bool = field(default=True, metadata={"help": "per-layer least-squares scale α on the shared base (W_l ≈ α_l·W_shared + B_l·A_l)"})
    base_iters: int = field(default=3, metadata={"help": "alternating-base refinement iterations"})
    damping: float = field(default=0.01, metadata={"help": "covariance damping, fraction of the mean diagonal"})
    calib_samples: int = field(default=32, metadata={"help": "calibration sequences for asvd/gates/sensitivity"})
    calib_seq_len: int = field(default=256, metadata={"help": "calibration sequence length (tokens)"})
    calib_text: str = field(default=DEFAULT_TRAIN_TEXT, metadata={
        "help": "calibration text: a training text set (sotu-train, wiki-train, mixed-train) or a file/folder of your own"})
    seed: int = field(default=0, metadata={"help": "seed for calibration sampling"})
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if self.groups is not None:
            if not isinstance(self.groups, (list, tuple)) or not all(isinstance(g, (list, tuple)) for g in self.groups):
                raise ConfigError(f"groups must be a list of lists of layer indices, got {self.groups!r}")
            self.groups = [[int(i) for i in g] for g in self.groups]
        if self.layer_range is not None:
            if len(self.layer_range) != 2:
                raise ConfigError(f"layer_range must be [start, end), got {self.layer_range!r}")
            self.layer_range = (int(self.layer_range[0]), int(self.layer_range[1]))
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2, got {self.group_size}")
        if self.target_params is not None and not (0.0 < float(self.target_params) < 1.0):
            raise ConfigError(f"target_params must be a fraction in (0, 1), got {self.target_params}")
        check_drop_layers(self.drop_layers)
        if self.drop_layers == DROP_AUTO and self.target_params is None:
            raise ConfigError(f"drop_layers '{DROP_AUTO}' needs target_params: the counts are compared at one budget")
        if self.drop_search_max is not None and (isinstance(self.drop_search_max, bool) or not isinstance(self.drop_search_max, int)
                                                 or self.drop_search_max < 1):
            raise ConfigError(f"drop_search_max must be a whole number >= 1, got {self.drop_search_max!r}")
        if isinstance(self.drop_search_samples, bool) or not isinstance(self.drop_search_samples, int) or self.drop_search_samples < 1:
            raise ConfigError(f"drop_search_samples must be a whole number >= 1, got {self.drop_search_samples!r}")
        for name in ("rank_attn", "rank_mlp"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for p, r in self.ranks.items():
            if p not in ALL_PROJECTIONS:
                raise ConfigError(f"ranks names unknown projection '{p}'; allowed: {', '.join(ALL_PROJECTIONS)}")
            if int(r) < 0:
                raise ConfigError(f"rank for '{p}' must be >= 0, got {r}")
        if self.projections is not None:
            bad = [p for p in self.projections if p not in ALL_PROJECTIONS]
            if bad:
                raise ConfigError(f"unknown projection(s) {bad}; allowed: {', '.join(ALL_PROJECTIONS)}")
        if not (self.share_attn or self.share_mlp or self.projections):
            raise ConfigError("nothing to share: share_attn and share_mlp are both off and no projections given")
        if self.base not in BASES:
            raise ConfigError(f"base '{self.base}' is unknown; allowed: {', '.join(BASES)}")
        if self.init not in INITS:
            raise ConfigError(f"init '{self.init}' is unknown; allowed: {', '.join(INITS)}")
        if not (0 <= self.damping < 1):
            raise ConfigError(f"damping must be in [0, 1), got {self.damping}")
        if self.calib_samples < 1 or self.calib_seq_len < 8:
            raise ConfigError(f"calib_samples must be >= 1 and calib_seq_len >= 8, got {self.calib_samples}, {self.calib_seq_len}")
        check_training_text(self.calib_text)
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"CompressConfig version {self.version} is not supported (this edgedelta reads {CONFIG_VERSION})")

    # --- projections and ranks --------------------------------------------------------
    @property
    def needs_calibration(self) -> bool:
        """Whether compress() reads calibration text (data-aware init, gates, anchor or
        alternating base, budget planning, layer removal)."""
        return (self.init == "asvd" or self.gates or self.base in ("alternating", "anchor") or self.target_params is not None
                or self.drop_layers != 0)

    def shared_projections(self, adapter) -> tuple[str, ...]:
        if self.projections is not None:
            bad = [p for p in self.projections if p not in adapter.projections]
            if bad:
                raise ConfigError(f"projection(s) {bad} do not exist in {adapter.name}; it has: {', '.join(adapter.projections)}")
            return tuple(self.projections)
        kinds = ({"attn"} if self.share_attn else set()) | ({"mlp"} if self.share_mlp else set())
        return tuple(p for p, k in adapter.kinds.items() if k in kinds)

    def rank_for(self, proj: str, kind: str) -> int:
        if proj in self.ranks:
            return int(self.ranks[proj])
        return int(self.rank_attn if kind == "attn" else self.rank_mlp)

    def resolve_groups(self, num_layers: int) -> list[list[int]]:
        """The explicit groups, validated against the model's layer count."""
        if self.groups is not None:
            groups = self.groups
        elif self.layer_range is not None:
            start, end = self.layer_range
            if not (0 <= start < end <= num_layers):
                raise ConfigError(f"layer_range {list(self.layer_range)} is outside the model's layers 0..{num_layers}")
            groups = [list(range(s, min(s + self.group_size, end))) for s in range(start, end, self.group_size)]
            groups = [g for g in groups if len(g) >= 2]
        else:
            raise ConfigError("no sharing plan: give groups, layer_range, or target_params")
        seen: set[int] = set()
        for g in groups:
            if len(g) < 2:
                raise ConfigError(f"group {g} has fewer than 2 layers")
            for i in g:
                if not 0 <= i < num_layers:
                    raise ConfigError(f"layer {i} in group {g} is out of range 0..{num_layers - 1}")
                if i in seen:
                    raise ConfigError(f"layer {i} appears in more than one group (groups overlap): {groups}")
                seen.add(i)
            if sorted(g) != list(range(min(g), max(g) + 1)):
                raise ConfigError(f"group {g} is not a run of consecutive layers")
        return [sorted(g) for g in groups]

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["layer_range"] is not None:
            d["layer_range"] = list(d["layer_range"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressConfig":
        return config_from_dict(cls, d, "compress")

    @classmethod
    def from_json_file(cls, path) -> "CompressConfig":
        return config_from_json_file(cls, path, "compress")
