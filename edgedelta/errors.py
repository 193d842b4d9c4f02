"""Typed errors. Every error a user can cause is an EdgeDeltaError: the CLI prints its
message as one line on stderr and exits with code 2 (never a traceback)."""


class EdgeDeltaError(Exception):
    """Base class for errors caused by bad input or a bad file (user-facing)."""

    exit_code = 2


class ConfigError(EdgeDeltaError, ValueError):
    """A config value is invalid; the message names the value and what is allowed."""


class ModelLoadError(EdgeDeltaError):
    """A model directory/file is missing, corrupt, or of an unsupported architecture."""


class IntegrityError(EdgeDeltaError):
    """A file does not match the checksum recorded in its manifest."""


class OutputExistsError(EdgeDeltaError):
    """The output path exists and --force was not given."""


class ParityError(EdgeDeltaError):
    """An exported model's output differs from the reference beyond tolerance."""

    def __init__(self, output: str, max_abs_diff: float, tolerance: float, detail: str = ""):
        self.output, self.max_abs_diff, self.tolerance = output, max_abs_diff, tolerance
        msg = f"parity check failed for output '{output}': max abs diff {max_abs_diff:.3g} > tolerance {tolerance:.3g}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
