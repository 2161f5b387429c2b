"""The project's error types: each message says what was wrong and what to do. Knows nothing else."""


class DetoxError(Exception):
    """A user-facing error: the CLI prints its message alone, without a traceback."""


class ConfigError(DetoxError, ValueError):
    """A bad configuration key or value (also a ValueError, as Python code that builds configs expects).

    Raised with its parts (``key``, what it ``need``s, what it ``got``, the ``fix``), it renders them as one
    line, and ``render(name)`` writes the key as the edge that set it calls it (``--n`` for
    ``eval.num_prompts`` on the command line); raised with a ``message``, it says that."""

    def __init__(
        self, message: str = "", *, key: str | None = None, need: str = "", got: object = None, fix: str = ""
    ) -> None:
        self.key, self.need, self.got, self.fix = key, need, got, fix
        super().__init__(message or self.render())

    def render(self, name: str | None = None) -> str:
        if not self.need or (name is None and self.args and self.args[0]):
            return str(self.args[0]) if self.args else ""
        what = name or f"Config key '{self.key}'"
        return f"{what} must be {self.need}, got {self.got!r}" + (f": {self.fix}." if self.fix else ".")


class ModelLoadError(DetoxError):
    """A model, tokenizer or adapter that cannot be found or loaded."""


class DataError(DetoxError):
    """A missing, empty or malformed dataset."""


class TrainingError(DetoxError):
    """Training cannot go on (non-finite steps in a row, a corrupt checkpoint)."""


class Interrupted(DetoxError):
    """Training stopped cleanly on a signal, its last step checkpointed; ``exit_code`` is 128 + the
    signal's number, as a shell reports it; ``run_dir`` is where ``--resume`` continues."""

    def __init__(self, message: str, exit_code: int, run_dir: str) -> None:
        super().__init__(message)
        self.exit_code, self.run_dir = exit_code, run_dir


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's first line (its type's name where it says nothing), cut to ``limit`` characters: what
    a one-line message quotes of an error from a library."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
