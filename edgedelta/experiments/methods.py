"""The compression methods `edgedelta compare` knows (compare.py builds
them); here, without torch, so the CLI lists them without importing the stack."""

# deltallm-drop: DeltaLLM after removing the drop_layers least influential layers
# (CompressConfig.drop_layers); a known method, not in the default set (its layer count is per model)
METHODS = ("deltallm", "deltallm-drop", "shortgpt", "laco", "jointdrop", "slicegpt")
DEFAULT_METHODS = ("deltallm", "shortgpt", "laco", "jointdrop", "slicegpt")
