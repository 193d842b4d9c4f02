"""edgedelta.runtime: run an exported artifact with ONNX Runtime (CPU or CUDA), generate text
with a KV cache, and profile memory and speed per phase.

    from edgedelta.runtime import Session
    s = Session.from_dir("out/model-onnx", provider="auto")
    print(s.generate("Hello", max_new_tokens=32).text)
"""

from .artifact import Artifact, KVSpec
from .generate import GenerationResult, generate, generate_ids, stream
from .sampling import GenerationConfig
from .session import Session, resolve_provider

__all__ = ["Artifact", "KVSpec", "Session", "GenerationConfig", "GenerationResult", "generate", "generate_ids",
           "stream", "resolve_provider"]
