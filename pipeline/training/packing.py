"""Padding-free forward passes: several sequences share one row, so no FLOP is spent on padding.

Every forward pass that reads a model's outputs at known tokens runs packed: PPO's rollout scoring
and update (`pipeline.ppo.rollout`) and every reward-model score (`pipeline.training.reward_model`).
A PPO rollout is laid out as `[left-padded prompt | response padded after EOS]`; on the default
data about a third of those positions are padding. Packing lays the real tokens of each sequence
end to end in rows as wide as the longest sequence (first-fit decreasing) and restarts the position
ids at 0 for every sequence. Given restarting position ids and no attention mask, transformers
builds a block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`), so each sequence
attends only to its own earlier tokens: the same computation as in its own padded row.

Everything read back is flat, one entry per real response token, in the row-major order of the
padded layout's response mask (`response_mask.bool()`); `PackedSequences.to_padded` puts a flat
tensor back into the (batch, response columns) layout that GAE works in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedSequences:
    input_ids: torch.Tensor  # (n_rows, width): sequences end to end, filler (id 0) after the last one in a row
    position_ids: torch.Tensor  # (n_rows, width): 0 at the first token of every sequence
    response_rows: torch.Tensor  # (N,) row of the position that predicts each response token
    response_cols: torch.Tensor  # (N,) its column: the position just before the token
    response_targets: torch.Tensor  # (N,) the response tokens themselves
    last_rows: torch.Tensor  # (n_sequences,) row of each sequence's last token (the EOS when there is one)
    last_cols: torch.Tensor  # (n_sequences,)
    response_mask: torch.Tensor  # (n_sequences, response columns) bool: the padded layout, for `to_padded`

    def to_padded(self, flat: torch.Tensor) -> torch.Tensor:
        """(N,) per-response-token values -> (n_sequences, response columns), 0 on padding."""
        padded = flat.new_zeros(self.response_mask.shape)
        padded[self.response_mask] = flat
        return padded


def first_fit_decreasing(lengths: list[int], capacity: int) -> tuple[list[int], list[int], int]:
    """Place items into bins of `capacity`, longest first, each into the first bin it fits.

    Returns (bin of each item, offset of each item inside its bin, number of bins).
    """
    if lengths and max(lengths) > capacity:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {capacity}")
    bins, offsets, used = [0] * len(lengths), [0] * len(lengths), []
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for index, filled in enumerate(used):
            if filled + lengths[item] <= capacity:
                break
        else:
            index = len(used)
            used.append(0)
        bins[item], offsets[item] = index, used[index]
        used[index] += lengths[item]
    return bins, offsets, len(used)


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int) -> PackedSequences:
    """Pack `[left-padded prompt | right-padded response]` rows (response from column `response_start`).

    Each row's real tokens are contiguous: the prompt ends at `response_start` and the response
    starts there, so one slice per row holds the whole sequence. The filler after the last sequence
    of a row (token id 0) is a sequence of its own: nothing attends to it and nothing reads it.
    """
    device = input_ids.device
    attention_mask = attention_mask.bool()
    response_mask = attention_mask[:, response_start:]
    prompt_lengths = attention_mask[:, :response_start].sum(1)
    lengths = attention_mask.sum(1)
    if bool((prompt_lengths == 0).any()):
        raise ValueError("every sequence needs at least one prompt token to predict its first response token from")
    length_list = lengths.tolist()
    width = max(length_list)
    bins, offsets, n_rows = first_fit_decreasing(length_list, width)
    bins_t = torch.tensor(bins, device=device)
    offsets_t = torch.tensor(offsets, device=device)

    # One entry per real token: its sequence, its index j inside the sequence, where it comes from and goes to.
    sequence = torch.repeat_interleave(torch.arange(len(length_list), device=device), lengths)
    starts = lengths.cumsum(0) - lengths
    j = torch.arange(sequence.numel(), device=device) - starts[sequence]
    source_col = (response_start - prompt_lengths)[sequence] + j
    row, col = bins_t[sequence], offsets_t[sequence] + j

    packed_ids = torch.zeros((n_rows, width), dtype=input_ids.dtype, device=device)
    packed_ids[row, col] = input_ids[sequence, source_col]
    # Trailing padding in a row counts 0, 1, 2, ... as a sequence of its own; the real tokens get j.
    used = torch.zeros(n_rows, dtype=torch.long, device=device).scatter_add_(0, bins_t, lengths)
    position_ids = torch.arange(width, device=device)[None] - used[:, None]
    position_ids[row, col] = j

    is_response = j >= prompt_lengths[sequence]  # token j of the response is predicted at position j - 1
    last = starts + lengths - 1
    return PackedSequences(
        input_ids=packed_ids,
        position_ids=position_ids,
        response_rows=row[is_response],
        response_cols=col[is_response] - 1,
        response_targets=packed_ids[row[is_response], col[is_response]],
        last_rows=row[last],
        last_cols=col[last],
        response_mask=response_mask,
    )


def packed_hidden_states(backbone, packed: PackedSequences) -> torch.Tensor:
    """Last hidden states of a packed batch, (rows, width, H). No attention mask and no cache: then the
    restarting position ids make transformers build the block-diagonal causal mask."""
    return backbone(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).last_hidden_state
