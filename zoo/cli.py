"""``zoo fit|validate|test|predict --config recipes/....yaml``: LightningCLI with zoo's links."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from zoo.strategies import FSDP


class ZooCLI(LightningCLI):
    """LightningCLI whose data-derived sizes flow into the model, so no number is typed twice.

    ``data.vocab_size`` (known once the tokenizer exists) is linked to
    ``model.init_args.backbone.init_args.vocab_size``; a fine-tuning data module's ``num_labels`` and
    ``label_names`` (read from its training file) to the model's.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - LightningArgumentParser
        parser.link_arguments(
            "data.vocab_size", "model.init_args.backbone.init_args.vocab_size", apply_on="instantiate"
        )
        # fine-tuning: the label set is read from the training file (links to models without these
        # arguments are skipped)
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self._given_args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        check_config_files(self._given_args)
        super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """``trainer.strategy: fsdp`` means `zoo.strategies.FSDP`, which wraps the blocks the model
        declares (Lightning's plain ``"fsdp"`` would wrap the whole model as one unit)."""
        strategy = kwargs.get("strategy", self._get(self.config_init, "trainer", default={}).get("strategy"))
        if strategy == "fsdp":
            kwargs["strategy"] = FSDP()
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, LightningCLI rebuilds the model from the checkpoint's hyper-parameters,
        which would silently override the command line (``zoo test --ckpt_path X
        --model.init_args.beam_size=1`` would decode with the saved beam size). Model arguments given
        explicitly on the command line win here."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        for key in _explicit_model_args(getattr(self, "_given_args", [])):
            hparams.pop(key, None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(
                f"error: the hyper-parameters saved in {ckpt_path} do not fit the model's arguments\n"
            )
            raise


def _explicit_model_args(args: list[str]) -> set[str]:
    """Top-level model argument names set on the command line: ``--model.init_args.beam_size=1`` and
    ``--model.beam_size 1`` both give ``beam_size``."""
    names = set()
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--model."):
            parts = arg[len("--model.") :].split("=", 1)[0].split(".")
            if parts and parts[0] == "init_args":
                parts = parts[1:]
            if parts:
                names.add(parts[0])
    return names


def check_config_files(args: Any) -> None:
    """Fail early, naming file, line and column, when a ``--config`` file is missing or not valid YAML
    (jsonargparse's own message only says ``<unicode string>``)."""
    if not isinstance(args, list | tuple):
        return
    for flag, value in zip(args, list(args[1:]) + [None]):
        if isinstance(flag, str) and flag.startswith("--config="):
            flag, value = "--config", flag.split("=", 1)[1]
        if flag not in ("--config", "-c") or not isinstance(value, str):
            continue
        path = Path(value)
        if not path.is_file():
            sys.exit(f"error: config file {path} not found")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(err, "problem", None) or str(err)
            sys.exit(f"error: {where}: invalid YAML: {problem}")


def main(args: list[str] | None = None) -> None:
    """Console entry point ``zoo``."""
    ZooCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
