"""Token batches (batch.py): padding by model kind, the teacher-forced inputs built once [D13], and
the unpadded rows that the CPU engine packs."""

from __future__ import annotations

import pytest
import torch

from detoxrl.core.batch import make_batch, pad_left, pad_right, trim_batch

QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]
RESPONSES = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6])]


def test_make_batch_pads_by_model_kind_and_rejects_empty_responses() -> None:
    left = make_batch(QUERIES, RESPONSES, 0, is_encoder_decoder=False)
    assert left.query_ids[2].tolist() == [0, 0, 0, 0, 0, 12, 13]
    assert left.response_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    right = make_batch(QUERIES, RESPONSES, 0, is_encoder_decoder=True)
    assert right.query_ids[2].tolist() == [12, 13, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="at least one token"):
        make_batch(
            QUERIES, [torch.tensor([1]), torch.tensor([], dtype=torch.long), torch.tensor([2])], 0, False
        )
    assert pad_left(QUERIES[:1], 0)[0].tolist() == pad_right(QUERIES[:1], 0)[0].tolist() == [[5, 10, 6, 27]]


def test_d13_teacher_forcing_inputs_for_both_model_kinds() -> None:
    left = make_batch(QUERIES, RESPONSES, 0, is_encoder_decoder=False).teacher_forcing()
    # row 2: five pads, the prompt 12 13, then the response minus its last token; positions skip the pads
    assert left["input_ids"][2].tolist() == [0, 0, 0, 0, 0, 12, 13, 4, 5]
    assert left["attention_mask"][2].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert left["position_ids"][2].tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3]
    assert left["position_ids"][1].tolist() == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        7,
    ]  # padding repeats the last position
    right = make_batch(QUERIES, RESPONSES, 0, is_encoder_decoder=True).teacher_forcing(decoder_start_id=0)
    assert right["decoder_input_ids"].tolist() == [[0, 1, 2], [0, 3, 0], [0, 4, 5]]  # start + response[:-1]
    assert right["input_ids"][2].tolist() == [12, 13, 0, 0, 0, 0, 0]


def test_shared_prompts_are_the_teacher_forced_inputs_without_padding_each_prompt_once() -> None:
    """[D25] Each distinct real prompt once with the rows that share it, and each row's response but its
    last token (a padded batch also feeds a short row's last token, which predicts only padding)."""
    batch = make_batch(QUERIES, RESPONSES, 0, is_encoder_decoder=False)
    prompts, rows_of, continuations = batch.shared_prompts()
    inputs = batch.teacher_forcing()
    assert [r.tolist() for r in continuations] == [[1], [], [4, 5]]
    assert rows_of == [[0], [1], [2]]
    for i, (ids, mask) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"], strict=True)):
        row = torch.cat([prompts[i], continuations[i]])
        assert row.tolist() == ids[mask.bool()].tolist()[: len(row)]
    shared = make_batch([QUERIES[2], QUERIES[0], QUERIES[2]], RESPONSES, 0, False).shared_prompts()
    assert [p.tolist() for p in shared[0]] == [[12, 13], [5, 10, 6, 27]] and shared[1] == [[0, 2], [1]]


def test_trim_batch_drops_only_all_padding_columns() -> None:
    for enc_dec in (False, True):
        batch = make_batch(QUERIES, RESPONSES, 0, enc_dec).select(torch.tensor([0, 2]))
        trimmed = trim_batch(batch, enc_dec)
        assert trimmed.query_ids.shape == (2, 4) and trimmed.response_ids.shape == (2, 3)
        assert trimmed.query_mask.sum() == batch.query_mask.sum()
        assert trimmed.response_mask.sum() == batch.response_mask.sum()
