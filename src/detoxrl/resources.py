"""Where the project's offline resources are: the shared/ folder (data and models that presets name as
``shared:NAME``) and the cache of converted models. Knows nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from detoxrl.errors import DataError


def shared_dir() -> Path | None:
    """The project's offline data and models: ``$DETOXRL_SHARED``, else a ``shared/`` folder beside the
    repository checkout or beside the working directory; None when there is none."""
    env = os.environ.get("DETOXRL_SHARED")
    for candidate in (env, Path(__file__).resolve().parents[3] / "shared", Path.cwd().parent / "shared"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def shared_path(spec: str, key: str) -> Path:
    """``shared:REL`` -> ``REL`` inside the project's shared/ folder (``shared_dir``), which must exist:
    presets name offline data and models so that they work wherever that folder is."""
    root = shared_dir()
    if root is None:
        raise DataError(
            f"{key} '{spec}' is a file of the project's shared/ folder, and there is none here (beside the "
            "repository or the working directory): set DETOXRL_SHARED to it, or give a path or hub id."
        )
    return root / spec.removeprefix("shared:")


def cache_dir() -> Path:
    """Where converted models are kept: ``$DETOXRL_CACHE`` or ``~/.cache/detoxrl``."""
    return Path(os.environ.get("DETOXRL_CACHE", Path.home() / ".cache" / "detoxrl")).expanduser()
