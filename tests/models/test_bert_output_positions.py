"""Computing only some rows of BERT's last layer gives exactly those rows of the full output."""

from __future__ import annotations

import torch

from zoo.models.bert import Bert


def test_output_positions_equal_the_gathered_full_output():
    torch.manual_seed(0)
    model = Bert(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=3, dropout=0.0).eval()
    ids = torch.randint(5, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    positions = torch.tensor([[0, 3, 7], [0, 1, 8], [0, 0, 0]])
    with torch.no_grad():
        full = model.hidden_states(ids, attention_mask=mask)  # (B, T, C)
        some = model.hidden_states(ids, attention_mask=mask, output_positions=positions)  # (B, 3, C)
    expected = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(some, expected, atol=1e-5, rtol=1e-5)
