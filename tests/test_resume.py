"""Resume mechanics below the recipes: the sampler skips exactly the consumed batches (also per rank), and
a kill in the middle of writing a checkpoint keeps the previous `last.ckpt`. The kill-and-resume of every
shipped recipe, bit-identical to an uninterrupted run, is `tests/test_resume_recipes.py`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


CAUSAL = """
    model:
      class_path: zoo.tasks.CausalLM
      init_args:
        backbone:
          class_path: zoo.models.gpt2.GPT2
          init_args: {{max_seq_len: 32, embed_dim: 32, num_heads: 2, num_layers: 2, dropout: 0.1}}
        optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 3.0e-3}}}}
        lr_scheduler: {{class_path: zoo.tasks.optim.WarmupCosine, init_args: {{warmup_steps: 8}}}}
    data:
      class_path: zoo.data.TextDataModule
      init_args:
        files: [{corpus}]
        max_seq_len: 32
        batch_size: 8
        cache_dir: {cache}"""


def _config(tmp_path: Path, name: str, corpus: Path, *, kill_at: int | None, task: str = CAUSAL) -> Path:
    kill = (
        f"""
        - class_path: kill_at.KillAt
          init_args: {{step: {kill_at}}}"""
        if kill_at
        else ""
    )
    task = task.format(corpus=corpus, cache=tmp_path / "cache")
    text = f"""
    seed_everything: 7
    trainer:
      accelerator: cpu
      max_steps: 40
      val_check_interval: 15
      check_val_every_n_epoch: null
      limit_val_batches: 2
      enable_progress_bar: false
      enable_model_summary: false
      logger: false
      default_root_dir: {tmp_path / name}
      callbacks:
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args:
            dirpath: {tmp_path / name / "ckpt"}
            every_n_train_steps: 10
            save_last: true
            save_top_k: -1{kill}
{task}
    """
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _zoo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(FIXTURES)}
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]


@pytest.mark.parametrize("step", [0, 3])
def test_sampler_skips_exactly_the_consumed_batches(step):
    from zoo.data.resumable import ResumableSampler, TrainPosition

    data = list(range(40))
    full = ResumableSampler(data, batch_size=4, seed=3)
    full.set_epoch(2)
    resumed = ResumableSampler(data, batch_size=4, seed=3)
    resumed.resume_from(TrainPosition(epoch=2, batches=step))
    resumed.set_epoch(2)
    assert list(resumed) == list(full)[step * 4 :]
    assert list(resumed) == list(full)  # the skip applies to one epoch pass only


def test_kill_during_checkpoint_write_keeps_the_previous_last_ckpt(tmp_path, stdlib_text_file):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(stdlib_text_file.read_text()[:30_000])
    config = _config(tmp_path, "run", corpus, kill_at=None)
    text = config.read_text().replace(
        "  - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        "  - class_path: kill_at.KillWhileSaving\n      init_args: {nth: 4}\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        1,
    )
    config.write_text(text)
    killed = _zoo("fit", "--config", str(config))
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = tmp_path / "run" / "ckpt"
    # saves 1-2: step-10 file and last.ckpt; save 3: step-20 file; save 4 (last.ckpt) dies half-written
    assert list(ckpts.glob(".last.ckpt.partial-*")), "the kill should have left a partial temporary file"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)  # still the complete step-10 file
    assert last["global_step"] == 10
    resumed = _zoo(
        "fit", "--config", str(_config(tmp_path, "run", corpus, kill_at=None)), "--ckpt_path", "last"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 40
    assert not list(ckpts.glob(".*partial*")), "the stale partial file is cleaned up by the next save"


def test_every_rank_resumes_its_own_share_at_the_same_batch():
    """Under DDP each rank saved the same batch count; each continues its own shard from there."""
    from zoo.data.resumable import ResumableSampler, TrainPosition

    data = list(range(64))
    for rank in (0, 1):
        full = ResumableSampler(data, batch_size=4, seed=5, num_replicas=2, rank=rank)
        full.set_epoch(1)
        resumed = ResumableSampler(data, batch_size=4, seed=5, num_replicas=2, rank=rank)
        resumed.resume_from(TrainPosition(epoch=1, batches=3))
        resumed.set_epoch(1)
        assert list(resumed) == list(full)[12:]
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(data, batch_size=4, seed=5, num_replicas=2, rank=rank)
        sampler.set_epoch(1)
        shards.append(set(sampler))
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(data)


SHARDED = (
    CAUSAL
    + """
        shard_tokens: 1500
        num_proc: 2
        chunk_bytes: 2000"""
)


def _sharded_config(tmp_path: Path, name: str, files: str, *, kill_at: int | None) -> Path:
    # validation at 15 and 30: right after the checkpoint the run resumes from (step 30), so the
    # validation loader must not draw from the global RNG, which the resumed run restores as saved
    return _config(tmp_path, name, files, kill_at=kill_at, task=SHARDED)


def test_sharded_corpus_resumes_bit_identical_across_an_epoch(tmp_path, stdlib_text_file):
    """Shards read lazily with a per-epoch document order: killed in epoch 1 and resumed from its
    mid-epoch checkpoint, the run ends bit-identical to an uninterrupted one."""
    text = stdlib_text_file.read_text()
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(4):  # 4 files (documents), 6000 chars: 21 batches per epoch, so 40 steps cross one
        (corpus / f"{i}.txt").write_text(text[i * 1500 : (i + 1) * 1500])
    files = f"{corpus}/*.txt"
    straight = _zoo("fit", "--config", str(_sharded_config(tmp_path, "straight", files, kill_at=None)))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _zoo("fit", "--config", str(_sharded_config(tmp_path, "run", files, kill_at=35)))
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = tmp_path / "run" / "ckpt"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 30  # epoch 1, batch 9
    config = _sharded_config(tmp_path, "run", files, kill_at=None)
    resumed = _zoo("fit", "--config", str(config), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "straight" / "ckpt" / "last.ckpt"), _weights(ckpts / "last.ckpt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert len(list((tmp_path / "cache" / "shards").glob("*/shard-*"))) == 4  # prepared once, 4 shards


def test_evaluation_loaders_leave_the_global_rng_alone(stdlib_text_file, tmp_path):
    """Validation can run between a checkpoint and the next training step (a checkpoint every 10 steps,
    validation every 15: both at step 30). A loader that seeds itself from the global RNG would move it,
    and a run resumed from that checkpoint, which restores the RNG as saved, would train on different
    dropout masks. (The fine-tuning data modules still draw: giving them a generator changes the random
    stream of the fine-tuning recipes, whose published results need measuring again first.)"""
    from zoo.data import TextDataModule

    data = TextDataModule([str(stdlib_text_file)], max_seq_len=16, cache_dir=str(tmp_path / "cache"))
    data.prepare_data()
    data.setup("fit")
    state = torch.get_rng_state()
    next(iter(data.val_dataloader()))
    assert torch.equal(torch.get_rng_state(), state)
