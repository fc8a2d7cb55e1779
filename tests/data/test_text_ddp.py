"""Under DDP the token cache is prepared once and every rank trains on its own share of the blocks."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from zoo.data import TextDataModule
from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM


class RecordBatches(L.Callback):
    """Write the first token ids of every training example each rank sees to ``out/rank{r}.json``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen += batch["input_ids"].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_ranks_read_disjoint_shares_of_one_cache(tmp_path):
    corpus = tmp_path / "numbered.txt"
    # 204 numbered lines = 2448 chars = 152 unique 16-char blocks: 76 per rank, 19 batches of 4, no padding
    corpus.write_text("".join(f"line {i:06d}\n" for i in range(204)))
    dm = TextDataModule(
        [str(corpus)], val_files=[str(corpus)], max_seq_len=16, batch_size=4, cache_dir=str(tmp_path / "c")
    )
    model = CausalLM(GPT2(vocab_size=dm.vocab_size, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1))
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp_spawn",
        devices=2,
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordBatches(str(tmp_path))],
    )
    trainer.fit(model, datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = [{tuple(x) for x in r} for r in ranks]
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1], "two ranks trained on the same block"
    dm.setup("fit")
    every_block = {tuple(dm.train_set[i]["input_ids"].tolist()) for i in range(len(dm.train_set))}
    assert len(every_block) == 152 and len(ranks[0]) == len(ranks[1]) == 76
    assert seen[0] | seen[1] == every_block
    assert len(list((tmp_path / "c" / "tokens").glob("*.uint16"))) == 1
