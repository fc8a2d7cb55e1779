"""Packed batches (``batching: packed``) for fine-tuning and BERT pretraining: several examples share a
row, kept apart by ``document_ids``; each example gets the logits, losses and gradients it gets padded in a
row of its own."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_file
from torch import Tensor, nn

from zoo.data import TextClassificationDataModule
from zoo.data.collate import first_fit_rows, pack_batch, pad_batch
from zoo.data.masking import MLMCollator, PackedMLMCollator
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.tasks import MaskedLM, SequenceClassification, TokenClassification

LENGTHS = [7, 3, 12, 5, 2, 9, 4, 11, 6, 1]


def _tiny_bert(**overrides) -> Bert:
    args = dict(vocab_size=500, max_seq_len=64, embed_dim=32, num_heads=2, num_layers=2)
    return Bert(**{**args, "with_pretraining_heads": False, **overrides})


def _items(lengths: list[int], *, tags: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(sum(lengths))
    items = []
    for i, n in enumerate(lengths):
        ids = torch.randint(5, 500, (n,), generator=g).tolist()
        item = {"input_ids": ids, "token_type_ids": [0] * (n // 2) + [1] * (n - n // 2), "index": i}
        if tags:
            tag_ids = torch.randint(0, 4, (n,), generator=g)
            item["labels"] = tag_ids.masked_fill(torch.rand(n, generator=g) < 0.3, -100).tolist()
        else:
            item["labels"] = i % 3
        items.append(item)
    return items


def test_first_fit_rows_fill_each_row_longest_first():
    rows = first_fit_rows(LENGTHS, 12)
    assert sorted(i for row in rows for i in row) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in row) <= 12 for row in rows)
    assert len(rows) == 5  # 60 tokens in rows of 12: no padding at all
    with pytest.raises(ValueError, match="example 2 has 12 tokens, more than a row of 11"):
        first_fit_rows(LENGTHS, 11)


def test_pack_batch_lays_out_every_example_once():
    items = _items(LENGTHS)
    packed = pack_batch(items, pad_token_id=0)
    spans, docs = packed["sequence_spans"], packed["document_ids"]
    assert packed["input_ids"].shape == (5, 12) and spans.shape == (10, 3)
    for n, (row, start, length) in enumerate(spans.tolist()):
        assert packed["input_ids"][row, start : start + length].tolist() == items[n]["input_ids"]
        assert packed["token_type_ids"][row, start : start + length].tolist() == items[n]["token_type_ids"]
        assert docs[row, start : start + length].eq(n).all()
    assert int(packed["attention_mask"].sum()) == sum(LENGTHS) == int((docs >= 0).sum())
    assert packed["labels"].tolist() == [i % 3 for i in range(10)] and packed["index"].tolist() == list(
        range(10)
    )
    assert packed["input_ids"].numel() < pad_batch(items, pad_token_id=0)["input_ids"].numel()


@pytest.mark.parametrize("pooling", ["pooler", "first", "last", "mean"])
def test_packed_classification_gives_each_example_its_own_logits(pooling):
    torch.manual_seed(0)
    task = SequenceClassification(_tiny_bert(), num_labels=3, pooling=pooling).eval()
    items = _items(LENGTHS)
    packed = task(pack_batch(items, pad_token_id=0))
    alone = torch.cat([task(pad_batch([item], pad_token_id=0)) for item in items])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_packed_training_step_has_the_padded_loss_and_gradients():
    torch.manual_seed(0)
    backbone = _tiny_bert(dropout=0.0, attention_dropout=0.0)
    task = SequenceClassification(backbone, num_labels=3, pooling="mean", classifier_dropout=0.0)
    items = _items(LENGTHS)
    grads = []
    for collate in (pad_batch, pack_batch):
        batch = collate(items, pad_token_id=0)
        task.zero_grad(set_to_none=True)
        loss = task.loss(task(batch), batch["labels"])
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in task.parameters()]))
    (padded_loss, padded), (packed_loss, packed) = grads
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-6, rtol=1e-5)
    assert sum(a is not None for a in packed) > 20
    for a, b in zip(packed, padded):  # the pooler gets no gradient either way (mean pooling)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_tagging_gives_every_token_its_own_logits_and_the_same_loss():
    torch.manual_seed(0)
    task = TokenClassification(_tiny_bert(), num_labels=4).eval()
    items = _items(LENGTHS, tags=True)
    keys = {"labels": -100}
    packed = pack_batch(items, pad_token_id=0, sequence_keys=keys)
    padded = pad_batch(items, pad_token_id=0, sequence_keys=keys)
    packed_logits, padded_logits = task(packed), task(padded)  # (R, W, L), (N, T, L)
    for n, (row, start, length) in enumerate(packed["sequence_spans"].tolist()):
        torch.testing.assert_close(
            packed_logits[row, start : start + length], padded_logits[n, :length], atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(
        task.loss(packed_logits, packed["labels"]),
        task.loss(padded_logits, padded["labels"]),
        atol=1e-6,
        rtol=1e-5,
    )


def test_packed_gpt2_classification_pools_each_last_token():
    torch.manual_seed(0)
    backbone = GPT2(vocab_size=500, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=2)
    task = SequenceClassification(backbone, num_labels=2, pooling="last").eval()
    items = [{k: v for k, v in item.items() if k != "token_type_ids"} for item in _items(LENGTHS)]
    alone = torch.cat([task(pad_batch([item], pad_token_id=0)) for item in items])
    torch.testing.assert_close(task(pack_batch(items, pad_token_id=0)), alone, atol=1e-5, rtol=1e-5)


class _NoPacking(nn.Module):
    embed_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(500, 8)

    def hidden_states(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        return self.embed(input_ids)


@pytest.mark.filterwarnings("ignore:_NoPacking does not record")
def test_a_backbone_that_cannot_keep_examples_apart_is_refused():
    task = SequenceClassification(_NoPacking(), num_labels=2, pooling="mean")
    with pytest.raises(ValueError, match="batching: packed.*_NoPacking does not: use batching: bucketed"):
        task(pack_batch(_items(LENGTHS), pad_token_id=0))


def test_packed_loader_reads_each_sst2_sentence_once_per_epoch_in_fewer_positions(minilm_dir, tmp_path):
    lines = shared_file("sst2/train.tsv").read_text(encoding="utf-8").splitlines()[:201]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    positions, seen = {}, {}
    for batching in ("padded", "packed"):
        data = TextClassificationDataModule(
            tokenizer=str(minilm_dir),
            train_file=str(tmp_path / "train.tsv"),
            batch_size=32,
            batching=batching,
        )
        data.setup("fit")
        batches = list(data.train_dataloader())
        seen[batching] = sorted(i for b in batches for i in b["index"].tolist())
        positions[batching] = sum(b["input_ids"].numel() for b in batches)
        assert [len(b["labels"]) for b in batches] == [32] * 6 + [8]  # examples per step, as batch_size says
    assert seen["packed"] == seen["padded"] == list(range(200))
    assert positions["packed"] < 0.8 * positions["padded"]


def _pretraining_examples(lengths: list[int]) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i, n in enumerate(lengths):  # [CLS] A [SEP] B [SEP] with ids 2, 3; 0 pads, 4 is [MASK]
        a, b = (
            torch.randint(5, 500, (n // 2,), generator=g),
            torch.randint(5, 500, (n - n // 2,), generator=g),
        )
        ids = torch.cat([torch.tensor([2]), a, torch.tensor([3]), b, torch.tensor([3])])
        types = torch.cat([torch.zeros(len(a) + 2), torch.ones(len(b) + 1)]).long()
        out.append({"input_ids": ids, "token_type_ids": types, "index": i, "next_sentence_label": i % 2})
    return out


def test_packed_pretraining_has_the_padded_mlm_and_nsp_losses_and_gradients():
    torch.manual_seed(0)
    task = MaskedLM(_tiny_bert(with_pretraining_heads=True, dropout=0.0, attention_dropout=0.0))
    examples = _pretraining_examples([40, 9, 25, 6, 30, 12, 3, 18])
    kw = dict(mask_token_id=4, pad_token_id=0, special_token_ids=range(5), vocab_size=500, seed=3)
    padded, packed = MLMCollator(**kw)(examples), PackedMLMCollator(**kw)(examples)
    assert packed["input_ids"].shape[0] < 8 and packed["input_ids"].numel() < padded["input_ids"].numel()
    # where each padded target (row-major) sits in the packed rows: MLM logits come in row-major order
    b, t = (padded["labels"] != -100).nonzero().unbind(-1)
    spans = packed["sequence_spans"]
    order = torch.argsort(spans[b, 0] * packed["input_ids"].shape[1] + spans[b, 1] + t)
    assert torch.equal(padded["labels"][b, t][order], packed["labels"][packed["labels"] != -100])
    results = []
    for batch in (padded, packed):
        task.zero_grad(set_to_none=True)
        out = task.losses(batch)
        out.loss.backward()
        results.append((out, [p.grad for p in task.parameters()]))
    (padded_out, grads_a), (packed_out, grads_b) = results
    for name in ("mlm_loss", "nsp_loss", "nsp_logits"):
        torch.testing.assert_close(getattr(packed_out, name), getattr(padded_out, name), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_out.mlm_logits, padded_out.mlm_logits[order], atol=1e-5, rtol=1e-5)
    for x, y in zip(grads_b, grads_a):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("collate", [pad_batch, pack_batch])
def test_first_token_pooling_computes_only_the_first_rows_of_the_last_layer(collate):
    torch.manual_seed(0)
    task = SequenceClassification(_tiny_bert(), num_labels=3, pooling="first").eval()
    batch = collate(_items(LENGTHS), pad_token_id=0)
    full = task.features(batch)  # (B, T, C): every row of the last layer
    if collate is pad_batch:
        expected = full[:, 0]
    else:
        rows, starts, _ = batch["sequence_spans"].unbind(-1)
        expected = full[rows, starts]
    torch.testing.assert_close(task._first_tokens(batch), expected, atol=1e-5, rtol=1e-5)
