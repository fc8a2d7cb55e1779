"""An unset ``trainer.precision``: bf16 autocast on a CPU with native bf16, fp32 on one without, said in one
line; an explicit precision is kept."""

from __future__ import annotations

import pytest

from zoo.cli import main
from zoo.precision import choose_precision, native_bf16

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
OLD = "flags\t\t: fpu sse avx2 avx512f\n"


def test_the_cpus_bf16_feature_decides():
    assert native_bf16(ZEN4) == "avx512_bf16"
    assert native_bf16(SAPPHIRE_RAPIDS) == "amx_bf16"
    assert native_bf16(OLD) is None
    precision, line = choose_precision("cpu", ZEN4)
    assert precision == "bf16-mixed" and "natively: avx512_bf16" in line and "32-true forces" in line
    precision, line = choose_precision("cpu", OLD)
    assert precision == "32-true" and "no native bf16" in line and "bf16-mixed forces" in line


def _tiny_run(tmp_path, stdlib_text_file, *extra: str) -> list[str]:
    return [
        "fit", "--trainer.accelerator=cpu", "--trainer.max_steps=1", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}",
        "--model=zoo.tasks.CausalLM", "--model.backbone=zoo.models.gpt2.GPT2",
        "--model.backbone.init_args.max_seq_len=16", "--model.backbone.init_args.embed_dim=16",
        "--model.backbone.init_args.num_heads=2", "--model.backbone.init_args.num_layers=1",
        "--data=zoo.data.TextDataModule", f"--data.files=[{stdlib_text_file}]", "--data.max_seq_len=16",
        "--data.batch_size=2", f"--data.cache_dir={tmp_path / 'cache'}", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("given", [None, "32-true"])
def test_the_cli_chooses_only_when_unset(tmp_path, stdlib_text_file, capsys, monkeypatch, given):
    import functools

    import lightning.pytorch as pl

    seen = {}
    original = pl.Trainer.__init__

    @functools.wraps(original)
    def record(self, *args, **kwargs):
        seen["precision"] = kwargs.get("precision")
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", record)
    monkeypatch.setattr("zoo.precision.native_bf16", lambda cpuinfo=None: "avx512_bf16")
    main(_tiny_run(tmp_path, stdlib_text_file, *([f"--trainer.precision={given}"] if given else [])))
    err = capsys.readouterr().err
    if given is None:
        assert seen["precision"] == "bf16-mixed"
        assert "zoo: precision: bf16-mixed (this CPU computes bf16 natively: avx512_bf16;" in err
    else:
        assert seen["precision"] == "32-true" and "zoo: precision:" not in err
