"""Packed rows: several documents in one row, each computed exactly as if it were alone.

A `zoo.nn.DecoderLM` given ``document_ids`` attends only within each document and restarts positions at
each one, for learned absolute positions (GPT-2), rotary (Llama) and ALiBi; the loss of a packed row is
the token-weighted mean of the documents' own losses; FlexAttention's block mask says what SDPA's mask
says; and a packed batch is refused where it cannot be honoured (a KV cache, a backbone that cannot
keep documents apart).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.data.batch import IGNORE_INDEX
from zoo.data.text import TokenBlocks
from zoo.models.gpt2 import GPT2
from zoo.models.llama import Llama
from zoo.models.protocols import CausalDecoder, PackedDecoder
from zoo.nn import ALiBiPositions
from zoo.nn.attention import build_attention_mask, document_block_mask, document_position_ids
from zoo.tasks import CausalLM

REPO = Path(__file__).resolve().parents[2]

VOCAB, EOT = 23, 22
TINY = dict(vocab_size=VOCAB, max_seq_len=32, embed_dim=32, num_heads=4, num_layers=2)
LENGTHS = (7, 4, 9)  # three documents, each ending with EOT


def _documents() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.cat([torch.randint(0, EOT, (n - 1,), generator=g), torch.tensor([EOT])]) for n in LENGTHS]


def _packed(docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row [A | B | C] (1, T) and its document ids (1, T)."""
    ids = torch.cat(docs)[None]
    document_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    return ids, document_ids


BACKBONES = {
    "gpt2-learned": lambda: GPT2(**TINY),
    "llama-rotary": lambda: Llama(**TINY, num_kv_heads=2),
    "llama-alibi": lambda: Llama(**TINY, positions=ALiBiPositions(num_heads=4)),
}


@pytest.fixture(params=sorted(BACKBONES))
def backbone(request) -> nn.Module:
    torch.manual_seed(0)
    return BACKBONES[request.param]().eval()


def test_document_positions_restart_at_each_document():
    document_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 2]])
    assert document_position_ids(document_ids).tolist() == [
        [0, 1, 2, 0, 1, 0, 1, 2],
        [0, 0, 1, 2, 3, 4, 0, 1],
    ]


def test_packed_forward_equals_each_document_alone(backbone):
    docs = _documents()
    ids, document_ids = _packed(docs)
    with torch.no_grad():
        packed = backbone(ids, document_ids=document_ids)  # (1, T, V)
        alone = torch.cat([backbone(d[None]) for d in docs], dim=1)
        unmasked = backbone(ids)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # without document_ids the later documents see the earlier ones: the test can tell the difference
    assert not torch.allclose(unmasked[:, LENGTHS[0] :], alone[:, LENGTHS[0] :], atol=1e-3)


def test_packed_rows_of_a_batch_keep_their_own_documents(backbone):
    docs = _documents()
    ids, document_ids = _packed(docs)
    other = torch.cat([docs[2], docs[0], docs[1]])[None]
    other_docs = torch.cat([torch.full((len(d),), i) for i, d in enumerate((docs[2], docs[0], docs[1]))])
    with torch.no_grad():
        batch = backbone(torch.cat([ids, other]), document_ids=torch.cat([document_ids, other_docs[None]]))
        first = backbone(docs[2][None])
    torch.testing.assert_close(batch[1:, : LENGTHS[2]], first, atol=1e-5, rtol=1e-5)


def test_packed_loss_is_the_token_weighted_mean_of_the_documents_losses(backbone):
    """Through the data side: TokenBlocks with the EOT id makes the labels and document ids."""
    docs = _documents()
    stream = torch.cat([*docs, torch.tensor([3])]).numpy()  # a next document's first token follows
    item = TokenBlocks(stream, block_size=len(stream) - 1, eot_id=EOT)[0]
    assert item["document_ids"].tolist() == _packed(docs)[1][0].tolist()
    task = CausalLM(backbone).eval()
    with torch.no_grad():
        packed = task.loss(
            task(item["input_ids"][None], None, item["document_ids"][None]), item["labels"][None]
        )
        nll = [nn.functional.cross_entropy(backbone(d[None, :-1])[0], d[1:], reduction="sum") for d in docs]
    scored = sum(len(d) - 1 for d in docs)
    assert (item["labels"] != IGNORE_INDEX).sum() == scored  # no target crosses a boundary
    torch.testing.assert_close(packed, sum(nll) / scored, atol=1e-5, rtol=1e-5)


def test_padding_combines_with_documents():
    torch.manual_seed(0)
    model = Llama(**TINY).eval()
    docs = _documents()
    ids, document_ids = _packed(docs)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=torch.long)], dim=1)
    pad_docs = torch.cat([document_ids, torch.full((1, 3), len(docs))], dim=1)
    with torch.no_grad():
        out = model(padded, attention_mask=mask, document_ids=pad_docs)
        alone = model(ids, document_ids=document_ids)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, : ids.shape[1]], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_flex_block_mask_says_what_the_sdpa_mask_says(causal):
    from torch.nn.attention.flex_attention import create_mask, flex_attention

    document_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1]])
    padding = torch.ones(2, 9, dtype=torch.long)
    padding[1, -2:] = 0
    dense = build_attention_mask(
        key_padding_mask=padding,
        num_queries=9,
        num_keys=9,
        causal=causal,
        device=torch.device("cpu"),
        document_ids=document_ids,
    )  # (2, 1, 9, 9)
    block = document_block_mask(document_ids, key_padding_mask=padding, causal=causal)
    flex_dense = create_mask(block.mask_mod, 2, None, 9, 9, device="cpu")  # (2, 1, 9, 9)
    rows_with_a_key = dense.any(-1, keepdim=True) & flex_dense.any(-1, keepdim=True)
    assert torch.equal(flex_dense | ~rows_with_a_key, dense)  # dense lets key-less rows see every key
    q, k, v = torch.randn(3, 2, 4, 9, 16).unbind(0)
    with warnings.catch_warnings():  # on CPU, uncompiled: flex's unfused reference implementation
        warnings.simplefilter("ignore", UserWarning)
        y = flex_attention(q, k, v, block_mask=block)
    expected = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    real = padding.bool()[:, None, :, None]  # outputs at padding queries are never read
    torch.testing.assert_close(y * real, expected * real, atol=1e-5, rtol=1e-5)


def test_packed_rows_refuse_a_kv_cache():
    model = Llama(**TINY).eval()
    ids, document_ids = _packed(_documents())
    with pytest.raises(ValueError, match="document_ids .* KV cache"):
        model(ids, document_ids=document_ids, cache=model.init_cache(1))


class _GRULM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        return self.out(self.emb(input_ids))


def test_causal_lm_refuses_packed_batches_for_a_backbone_that_cannot_keep_documents_apart():
    gru = _GRULM()
    assert isinstance(gru, CausalDecoder) and not isinstance(gru, PackedDecoder)
    assert isinstance(Llama(**TINY), PackedDecoder) and isinstance(GPT2(**TINY), PackedDecoder)
    task = CausalLM(gru)
    ids, document_ids = _packed(_documents())
    batch = {"input_ids": ids, "labels": ids, "document_ids": document_ids}
    with pytest.raises(ValueError, match="_GRULM cannot keep them apart .* pack_documents=false"):
        task.training_step(batch, 0)
    del batch["document_ids"]
    assert torch.isfinite(task.training_step(batch, 0))  # unpacked batches train as before


def test_zoo_fit_trains_on_packed_documents(tmp_path, monkeypatch, stdlib_text_file):
    """`--data.init_args.pack_documents=true` through the real command: packed batches reach attention."""
    import zoo.nn.attention as attention
    from zoo.cli import main

    seen = []
    build = attention.build_attention_mask

    def spy(**kwargs):
        seen.append(kwargs.get("document_ids") is not None)
        return build(**kwargs)

    monkeypatch.setattr(attention, "build_attention_mask", spy)
    second = tmp_path / "second.txt"
    second.write_text(stdlib_text_file.read_text()[:20000])
    monkeypatch.chdir(tmp_path)
    arg = "--model.init_args.backbone.init_args"
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"),
            f"--data.init_args.files=[{stdlib_text_file},{second}]",
            "--data.init_args.tokenizer=bpe",
            "--data.init_args.bpe_vocab_size=300",
            "--data.init_args.pack_documents=true",
            f"{arg}.num_layers=1",
            f"{arg}.embed_dim=32",
            f"{arg}.num_heads=2",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
            "--model.init_args.max_new_tokens=4",
        ]
    )
    logs = tmp_path / "runs" / "shakespeare-char" / "logs" / "version_0"
    assert (logs / "checkpoints" / "last.ckpt").is_file()
    metrics = (logs / "metrics.csv").read_text()
    assert "val_loss" in metrics
    # 1 sanity-check, 3 training and 1 validation batch, each through the document mask of the one layer
    assert sum(seen) == 5
