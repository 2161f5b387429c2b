"""The project's error types: each message says what was wrong and what to do. Knows nothing else."""


class DetoxError(Exception):
    """A user-facing error: the CLI prints its message alone, without a traceback."""


class ConfigError(DetoxError, ValueError):
    """A bad configuration key or value (also a ValueError, as Python code that builds configs expects)."""


class ModelLoadError(DetoxError):
    """A model, tokenizer or adapter that cannot be found or loaded."""


class DataError(DetoxError):
    """A missing, empty or malformed dataset."""


class TrainingError(DetoxError):
    """Training cannot go on (a non-finite loss, a corrupt checkpoint)."""
