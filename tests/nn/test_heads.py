"""Pooling reads the right positions whichever side the padding is on."""

from __future__ import annotations

import torch

from zoo.nn import last_token_index, pool_first, pool_last, pool_mean


def _hidden(B: int = 3, T: int = 5, C: int = 4) -> torch.Tensor:
    return torch.arange(B * T * C, dtype=torch.float32).reshape(B, T, C)


def test_pool_last_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    hidden = _hidden()
    assert last_token_index(mask).tolist() == [2, 4, 0]
    torch.testing.assert_close(pool_last(hidden, mask), hidden[[0, 1, 2], [2, 4, 0]])


def test_pool_last_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    hidden = _hidden()
    assert last_token_index(mask).tolist() == [4, 4, 4]
    torch.testing.assert_close(pool_last(hidden, mask), hidden[:, -1])


def test_pool_last_interior_gap_uses_the_last_real_token():
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [3]


def test_pool_mean_ignores_padding_on_either_side():
    hidden = _hidden(B=2)
    right = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(pool_mean(hidden, right)[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool_mean(hidden, left)[0], hidden[0, 3:].mean(0))
    torch.testing.assert_close(pool_mean(hidden, right)[1], hidden[1].mean(0))


def test_pool_first_is_position_zero():
    hidden = _hidden()
    torch.testing.assert_close(pool_first(hidden), hidden[:, 0])
