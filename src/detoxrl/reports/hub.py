"""Upload a run's final adapter (with its tokenizer) and its model card to the Hugging Face hub. Knows
nothing of training.

PPO's value head (``value_head.safetensors``) is left out unless asked for (``with_value_head``): the
critic only serves to continue training, and nobody who loads the adapter needs it. Needs a token
(``HF_TOKEN`` or ``hf auth login``) and network access; without either, or with ``HF_HUB_OFFLINE`` set,
it fails with one DetoxError line before or instead of any partial upload.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, get_token

from detoxrl.errors import DetoxError
from detoxrl.reports.card import HUB_ID, write_card
from detoxrl.rundir import MANIFEST, VALUE_HEAD_FILE, final_damage, holds_final_weights

TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads its boolean environment variables


def push(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    with_value_head: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Write the card into ``RUN_DIR/final`` , create ``repo_id`` (kept if it
    exists) and upload the folder: adapter, tokenizer, README.md, and the value head only
    ``with_value_head``. Returns the repository's URL."""
    final = Path(run_dir) / "final"
    if not holds_final_weights(Path(run_dir)):
        raise DetoxError(f"'{final}' holds no trained adapter or model: is '{run_dir}' a finished run?")
    if not HUB_ID.fullmatch(repo_id):
        raise DetoxError(f"'{repo_id}' is not a hub repository id: write it as OWNER/NAME.")
    damaged = final_damage(Path(run_dir))  # checksums every file: after the cheap checks
    if damaged is not None:
        raise DetoxError(f"{damaged} Nothing was pushed.")
    write_card(run_dir, repo_id=repo_id)
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE:
        raise DetoxError("HF_HUB_OFFLINE is set: unset it to push to the Hugging Face hub.")
    token = token or get_token()
    if not token:
        raise DetoxError("No Hugging Face token: set HF_TOKEN or log in with `hf auth login`.")
    api = HfApi(endpoint=endpoint, token=token)
    # huggingface_hub's network errors change class between versions (requests, httpx, its own
    # HTTP errors, OfflineModeIsEnabled): any failure of the two calls is reported as one line.
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        api.upload_folder(
            repo_id=repo_id,
            folder_path=final,
            commit_message="detoxrl: adapter and card",
            ignore_patterns=[MANIFEST] if with_value_head else [MANIFEST, VALUE_HEAD_FILE],
        )
    except Exception as e:
        raise DetoxError(f"Could not push to the Hugging Face hub ({type(e).__name__}: {e}).") from None
    return url
