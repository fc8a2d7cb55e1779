"""Checkpoints written before a family renamed its weights (``state_dict_renames``) keep working: `zoo
validate`, ``load_from_checkpoint`` and `zoo export` give the function the earlier zoo saved, and `zoo fit
--ckpt_path` continues weights, optimizer state and schedule as the earlier zoo would have. The fixtures
in ``fixtures/old_checkpoints`` were written by an earlier zoo (``make.py`` there; ``written_by.json``
names the commit); a synthetic pair of layouts shows the optimizer state follows a changed parameter
order."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, cpu_trainer, shared_file
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from zoo.checkpoint import check_fits, upgrade_state_dict
from zoo.cli import main
from zoo.tasks.base import BackboneTask
from zoo.tasks.optim import warmup_cosine_schedule

REPO = Path(__file__).resolve().parents[1]
OLD = REPO / "tests" / "fixtures" / "old_checkpoints"
_spec = importlib.util.spec_from_file_location("old_checkpoints_make", OLD / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
DATA_FILES = {
    "gpt2": "tinyshakespeare/input.txt",
    "bert": "wikitext-2/wiki.valid.tokens",
    "seq2seq": "multi30k/train.de",
}
V, C = 11, 8
pytestmark = pytest.mark.filterwarnings("ignore:.*does not record its constructor arguments")  # Old/NewNet


class Stack(nn.Module):
    def __init__(self, *, layers: int, out: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(C, C) for _ in range(layers))
        self.out = out


class OldNet(nn.Module):
    """The earlier layout: both stacks' layers first, then both stacks' last modules; a tied head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, C)
        self.encoder_layers = nn.ModuleList(nn.Linear(C, C) for _ in range(2))
        self.decoder_layers = nn.ModuleList(nn.Linear(C, C) for _ in range(2))
        self.register_buffer("scale", torch.tensor(0.5))  # a buffer among the parameters' keys
        self.encoder_out = nn.Linear(C, C)
        self.decoder_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _run(self, self.encoder_layers, self.encoder_out, self.decoder_layers, self.decoder_out, ids)


class NewNet(nn.Module):
    """Today's layout: each stack owns its layers and last module, so the parameter order changes."""

    state_dict_renames: ClassVar[dict[str, str]] = {
        "encoder_layers.": "encoder.layers.",
        "decoder_layers.": "decoder.layers.",
        "encoder_out.": "encoder.out.",
        "decoder_out.": "decoder.out.",
    }

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, C)
        self.encoder = Stack(layers=2, out=nn.Linear(C, C))
        self.decoder = Stack(layers=2, out=nn.LayerNorm(C))
        self.register_buffer("scale", torch.tensor(0.5))
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e, d = self.encoder, self.decoder
        return _run(self, e.layers, e.out, d.layers, d.out, ids)


def _run(net: nn.Module, enc: nn.ModuleList, enc_out: nn.Module, dec: nn.ModuleList, dec_out: nn.Module, ids):
    x = net.embed(ids) * net.scale  # (B, T, C)
    for layer in enc:
        x = torch.relu(layer(x))
    x = enc_out(x)
    for layer in dec:
        x = torch.relu(layer(x))
    return net.head(dec_out(x))  # (B, T, V)


BATCHES = torch.randint(0, V, (6, 4, 6), generator=torch.Generator().manual_seed(1))  # (step, B, T)


class NextToken(BackboneTask):
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        batch = BATCHES[self.global_step]  # the step's batch however the loader restarts on resume
        logits = self.backbone(batch[:, :-1])  # (B, T-1, V)
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def _fit(tmp_path: Path, net: nn.Module, ckpt_path: Path | None = None) -> BackboneTask:
    """6 AdamW steps (warm-up, then cosine over the 6) with a checkpoint every 3."""
    L.seed_everything(0)
    task = NextToken(net, lr_scheduler=warmup_cosine_schedule(warmup_steps=2, min_lr_ratio=0.1))
    save = ModelCheckpoint(tmp_path, filename="{step}", save_top_k=-1, every_n_train_steps=3)
    trainer = cpu_trainer(tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[save])
    trainer.fit(task, train_dataloaders=DataLoader(range(6), batch_size=None), ckpt_path=ckpt_path)
    return task


def test_upgrade_renames_only_the_backbones_old_prefixes() -> None:
    old = {
        "backbone.encoder_layers.0.weight": torch.ones(1),
        "backbone.decoder_out.weight": torch.zeros(1),
        "backbone.embed.weight": torch.ones(2),
        "encoder_layers.0.weight": torch.ones(3),  # not the backbone's
    }
    new = upgrade_state_dict(old, NewNet())
    assert list(new) == [
        "backbone.encoder.layers.0.weight",
        "backbone.decoder.out.weight",
        "backbone.embed.weight",
        "encoder_layers.0.weight",
    ]
    assert all(a is b for a, b in zip(old.values(), new.values()))
    assert upgrade_state_dict(new, NewNet()) is new  # today's layout: nothing to do


def test_the_size_check_of_ckpt_path_compares_old_weights_under_their_new_names() -> None:
    task = NextToken(NewNet())
    checkpoint = {"state_dict": {"backbone.encoder_layers.1.weight": torch.zeros(C, C + 1)}}
    with pytest.raises(ValueError, match=r"old\.ckpt: .*backbone\.encoder\.layers\.1\.weight is \[8, 9\]"):
        check_fits(checkpoint, task, None, "old.ckpt")


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")  # batches by step
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resuming_an_old_layout_checkpoint_continues_as_an_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old_net, new_net = OldNet(), NewNet()
    new_net.load_state_dict(upgrade_state_dict(old_net.state_dict(), new_net, prefix=""))
    renamed = [n for n, _ in upgrade_state_dict(dict(old_net.named_parameters()), new_net, prefix="").items()]
    assert renamed != [n for n, _ in new_net.named_parameters()]  # the order does change

    _fit(tmp_path / "old", old_net)  # the earlier zoo: checkpoints at steps 3 and 6
    uninterrupted = _fit(tmp_path / "new", new_net)
    resumed = _fit(tmp_path / "resumed", NewNet(), ckpt_path=tmp_path / "old" / "step=3.ckpt")

    assert resumed.trainer.global_step == 6
    expected = uninterrupted.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")  # tokenizers and encoded data, shared by a family's runs


def _args(subcommand: str, family: str, root: Path, cache: Path) -> list[str]:
    """The fixture's run resumed from its checkpoint, with the run's tokenizer (training a WordPiece
    vocabulary again does not give the same ids; a user's resume finds it in the run's cache)."""
    checkpoint = OLD / family / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True, mmap=True)
    tokenizer = cache / f"{family}-tokenizer.json"
    tokenizer.write_text(
        next(v["tokenizer"] for v in saved.values() if isinstance(v, dict) and "tokenizer" in v)
    )
    args = make.fit_args(family, repo=REPO, data=SHARED_DATA, root=root)
    return [
        subcommand,
        *args[1:],
        f"--data.init_args.cache_dir={cache}",
        f"--data.init_args.tokenizer={tokenizer}",
        f"--ckpt_path={checkpoint}",
    ]


def _assert_outputs(family: str, checkpoint: Path, expected: dict, inputs: dict, atol: float) -> None:
    got = make.reference(family, checkpoint, inputs)["outputs"]
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=atol, rtol=0, msg=f"{family} {name}")


@pytest.mark.parametrize("family", list(make.RUNS))
def test_old_checkpoint_validates_and_reloads_to_the_same_function(family: str, tmp_path, cache) -> None:
    shared_file(DATA_FILES[family])
    reference = torch.load(OLD / family / "reference.pt")
    main(_args("validate", family, tmp_path, cache))
    _assert_outputs(family, OLD / family / "last.ckpt", reference["step3"], reference["inputs"], atol=1e-6)


@pytest.mark.parametrize("family", list(make.RUNS))
def test_old_checkpoint_resumes_where_the_earlier_zoo_would_have_continued(family: str, tmp_path, cache):
    shared_file(DATA_FILES[family])
    reference = torch.load(OLD / family / "reference.pt")
    main(_args("fit", family, tmp_path, cache))
    assert not list(tmp_path.rglob("step3.ckpt"))  # steps 4-6 only: it resumed at step 3
    last = next(tmp_path.rglob("step6.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 6
    _assert_outputs(family, last, reference["step6"], reference["inputs"], atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "bert"])  # the exportable families
def test_old_checkpoint_exports_to_transformers_with_the_same_outputs(family: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    reference = torch.load(OLD / family / "reference.pt")
    main(["export", f"--ckpt_path={OLD / family / 'last.ckpt'}", f"--output={tmp_path}"])
    auto = transformers.AutoModelForPreTraining if family == "bert" else transformers.AutoModelForCausalLM
    with torch.no_grad():
        out = auto.from_pretrained(tmp_path).eval()(**reference["inputs"])
    got, key = (out.prediction_logits, "mlm_logits") if family == "bert" else (out.logits, "logits")
    torch.testing.assert_close(got, reference["step3"][key], atol=1e-6, rtol=0)
