"""Token batches of prompts and responses, and the one teacher-forced input built from them. Knows no
model, device kind or algorithm: ids and masks in, ids and masks out.

Shapes: B rows, P prompt tokens (padded), T response tokens (right-padded), N real tokens of a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def pad_left(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D tensors -> (ids (B, P), attention mask (B, P)), on the device of the first."""
    return _pad(seqs, pad_id, left=True)


def pad_right(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors -> (ids (B, T), mask (B, T)), on the device of the first."""
    return _pad(seqs, pad_id, left=False)


def _pad(seqs: list[torch.Tensor], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width, device = max(len(s) for s in seqs), seqs[0].device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span], mask[i, span] = s, 1
    return ids, mask


@dataclass(frozen=True)
class ResponseBatch:
    """Prompts (left-padded for decoder-only, right-padded for encoder-decoders) and responses."""

    query_ids: torch.Tensor  # (B, P)
    query_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.query_ids, self.query_mask, self.response_ids, self.response_mask)

    def select(self, index: torch.Tensor) -> ResponseBatch:
        """The rows ``index`` (a 1-D index tensor)."""
        return ResponseBatch(*(t[index] for t in self.tensors()))

    def to(self, device: torch.device | str) -> ResponseBatch:
        return ResponseBatch(*(t.to(device) for t in self.tensors()))

    def teacher_forcing(self, decoder_start_id: int | None = None) -> dict[str, torch.Tensor]:
        """[D13] The model inputs under which the position before each response token predicts it.

        Decoder-only (``decoder_start_id`` None): left-padded prompt + response[:-1] (B, P + T - 1),
        position ids counting real tokens only, as generation counts them. Encoder-decoder: the prompt
        -> encoder, decoder input = start token + response[:-1] (B, T).
        """
        if decoder_start_id is not None:
            start = torch.full_like(self.response_ids[:, :1], decoder_start_id)
            decoder_ids = torch.cat([start, self.response_ids[:, :-1]], dim=1)  # (B, T)
            return {
                "input_ids": self.query_ids,
                "attention_mask": self.query_mask,
                "decoder_input_ids": decoder_ids,
            }
        ids = torch.cat([self.query_ids, self.response_ids[:, :-1]], dim=1)  # (B, P + T - 1)
        mask = torch.cat([self.query_mask, self.response_mask[:, :-1]], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}

    def shared_prompts(self) -> tuple[list[torch.Tensor], list[list[int]], list[torch.Tensor]]:
        """[D13][D25] The same inputs without padding, each prompt once: the distinct real prompts (P_j,),
        the rows that share each (ascending), and each row's response[:-1] (length_i - 1,). The prompt's
        last position and then the row's response[:-1] predict the row's response."""
        prompts, rows_of = distinct(
            [q[m.bool()] for q, m in zip(self.query_ids, self.query_mask, strict=True)]
        )
        lengths = self.response_mask.sum(1).tolist()
        return prompts, rows_of, [r[: n - 1] for r, n in zip(self.response_ids, lengths, strict=True)]


def distinct(seqs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """1-D tensors -> the distinct ones in order of first appearance, and the indices of each's copies."""
    index: dict[tuple[int, ...], int] = {}
    firsts: list[torch.Tensor] = []
    copies: list[list[int]] = []
    for i, seq in enumerate(seqs):
        j = index.setdefault(tuple(seq.tolist()), len(firsts))
        if j == len(firsts):
            firsts.append(seq)
            copies.append([])
        copies[j].append(i)
    return firsts, copies


def make_batch(
    queries: list[torch.Tensor], responses: list[torch.Tensor], pad_id: int, is_encoder_decoder: bool
) -> ResponseBatch:
    """Pad prompts (left for decoder-only so that responses start in one column; right for encoders)
    and responses (right), on the device of the inputs."""
    if len(queries) != len(responses) or not queries:
        raise ValueError(f"Need as many responses as queries (> 0); got {len(queries)} and {len(responses)}.")
    if any(len(r) == 0 for r in responses):
        raise ValueError("Every response needs at least one token (the score sits on its last token).")
    query_ids, query_mask = (pad_right if is_encoder_decoder else pad_left)(list(queries), pad_id)
    response_ids, response_mask = pad_right(list(responses), pad_id)
    return ResponseBatch(query_ids, query_mask, response_ids, response_mask)


def trim_batch(batch: ResponseBatch, is_encoder_decoder: bool) -> ResponseBatch:
    """Drop columns that are padding in every row (mini-batches are often shorter than the batch)."""
    used = batch.query_mask.sum(0).nonzero()  # columns where some prompt has a real token
    q_slice = slice(0, int(used.max()) + 1) if is_encoder_decoder else slice(int(used.min()), None)
    t = int(batch.response_mask.sum(1).max())
    return ResponseBatch(
        batch.query_ids[:, q_slice],
        batch.query_mask[:, q_slice],
        batch.response_ids[:, :t],
        batch.response_mask[:, :t],
    )


def unpad(ids: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """(B, T) right-padded rows -> B 1-D tensors of their first ``lengths[i]`` tokens."""
    return [row[:n] for row, n in zip(ids, lengths, strict=True)]
