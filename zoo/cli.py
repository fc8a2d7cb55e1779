"""``zoo fit|validate|test|predict --config recipes/....yaml``: LightningCLI with zoo's links."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zoo.checkpoint import (
    check_fits,
    check_task,
    migrate_args,
    migrate_config,
    migrate_hparams,
    read_checkpoint,
)
from zoo.precision import choose_precision, say
from zoo.runs import (
    checkpoint_in,
    existing_log_dirs,
    place_run_outputs,
    remove_empty_log_dirs,
    resolve_last,
)
from zoo.strategies import FSDP
from zoo.tasks.base import BackboneTask


class ZooArgumentParser(LightningArgumentParser):
    """On a parse error, the message and a tip, without the 40-line usage first (``--help`` prints it)."""

    def print_usage(self, file: Any = None) -> None:
        if file is not sys.stderr:
            super().print_usage(file)


class ZooCLI(LightningCLI):
    """LightningCLI whose data-derived sizes flow into the model, so no number is typed twice.

    ``data.vocab_size`` (known once the tokenizer exists) is linked to
    ``model.init_args.backbone.init_args.vocab_size``; a fine-tuning data module's ``num_labels`` and
    ``label_names`` (read from its training file) to the model's. A task's ``pretrained`` source gives
    the backbone's architecture (`zoo.models.pretrained.fill_architecture`): the recipe names the class.
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
        task = _model_class_path(self._given_args)
        migrated = migrate_args(_migrated_config_files(self._given_args, task), task)  # old spellings
        if migrated is not self._given_args:
            self._given_args = args = migrated
        printing = _print_config_action()
        with printing.skip_print_config() if printing else contextlib.nullcontext():
            super().parse_arguments(parser, args)  # --print_config waits for the fill below
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config  # run=False: no subcommand
        if config.get("trainer") is not None:
            place_run_outputs(config.trainer)
        try:
            _fill_pretrained_architecture(config.get("model"))
        except OSError as err:  # a source not here (offline hub name): a run needs it, a look does not
            if subcommand and not (printing and printing.is_print_config_requested(parser)):
                raise
            say(f"zoo: the backbone's architecture is left as configured: {err}")
        if printing:
            printing.print_config_if_requested(parser, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """``trainer.strategy: fsdp`` means `zoo.strategies.FSDP`, which wraps the blocks the model
        declares (Lightning's plain ``"fsdp"`` would wrap the whole model as one unit); an unset
        ``trainer.precision`` is bf16 autocast on a CPU with native bf16, else fp32
        (`zoo.precision.choose_precision`, said in one line); the callbacks follow the Trainer's flags
        (`run_callbacks`)."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("strategy") == "fsdp":
            kwargs["strategy"] = FSDP()
        if config.get("precision") is None:
            kwargs["precision"], line = choose_precision(config.get("accelerator", "auto"))
            say(line)
        kwargs["callbacks"] = run_callbacks(config, self.subcommand, getattr(self, "_given_args", []))
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path last`` finds the previous run's ``last.ckpt`` (`zoo.runs.resolve_last`); any
        checkpoint is read safely and refused with a clear message when it belongs to another task.

        LightningCLI then rebuilds the model from the checkpoint's hyper-parameters, which would silently
        override the command line (``zoo test --ckpt_path X --model.init_args.beam_size=1`` would decode with
        the saved beam size). Model arguments given explicitly on the command line win here."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        self._checkpoint = None
        if config is None or not config.get("ckpt_path"):
            return
        if config.ckpt_path == "last":
            config.ckpt_path = resolve_last(config.trainer, subcommand)
            if config.ckpt_path is None:
                return
        elif config.ckpt_path in ("best", "hpc") or "://" in str(config.ckpt_path):
            return  # Lightning's own names and remote paths
        else:
            config.ckpt_path = checkpoint_in(config.ckpt_path)
        self._checkpoint = checkpoint = read_checkpoint(config.ckpt_path)
        check_task(checkpoint, (config.get("model") or {}).get("class_path"), config.ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams = migrate_hparams(hparams, hparams.get("_class_path") or config.model.get("class_path"))
        for key in _explicit_model_args(getattr(self, "_given_args", [])):
            hparams.pop(key, None)
        if not hparams:
            return
        # a checkpoint saved from plain Python has no _class_path: the config's class (same task family,
        # checked above) takes its hyper-parameters the way Lightning passes a CLI checkpoint's
        class_path = hparams.pop("_class_path", None) or config.model.get("class_path")
        hparams = {"class_path": class_path, "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(
                f"error: the hyper-parameters saved in {config.ckpt_path} do not fit the model's arguments\n"
            )
            raise

    def after_instantiate_classes(self) -> None:
        """With a checkpoint, compare it with what the config built before Lightning loads it, so a
        mismatch is named (tokenizer, weight shapes) instead of surfacing as a state_dict error."""
        if self._checkpoint is not None:
            check_fits(self._checkpoint, self.model, self.datamodule, self.config[self.subcommand].ckpt_path)
            self._checkpoint = None  # not kept in memory for the run
            if isinstance(self.model, BackboneTask):
                self.model.weights_from_checkpoint()

    def before_fit(self) -> None:
        from zoo.data.base import TokenizedDataModule

        if isinstance(self.datamodule, TokenizedDataModule):  # resumes through its own state_dict
            warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before")

    def _run_subcommand(self, subcommand: str) -> None:
        before = existing_log_dirs(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_empty_log_dirs(self.trainer, before)
            raise


def _print_config_action() -> Any:
    """jsonargparse's ``--print_config`` action, whose printing `ZooCLI` defers until the architecture
    is filled; ``None`` for a jsonargparse without it (``--print_config`` then prints the config unfilled)."""
    try:
        from jsonargparse._actions import _ActionPrintConfig
    except ImportError:
        return None
    needed = ("skip_print_config", "is_print_config_requested", "print_config_if_requested")
    return _ActionPrintConfig if all(hasattr(_ActionPrintConfig, name) for name in needed) else None


def _fill_pretrained_architecture(model: Any) -> None:
    """Write the architecture of the task's ``pretrained`` source into its backbone's ``init_args``
    (`zoo.models.pretrained.fill_architecture`), so ``config.yaml`` and the checkpoint record it whole."""
    from jsonargparse import Namespace

    from zoo.models.pretrained import fill_architecture
    from zoo.models.spec import import_class

    init_args = model.get("init_args") if isinstance(model, Namespace) else None
    pretrained = init_args.get("pretrained") if isinstance(init_args, Namespace) else None
    backbone = init_args.get("backbone") if isinstance(init_args, Namespace) else None
    if not isinstance(pretrained, str) or not isinstance(backbone, Namespace) or "class_path" not in backbone:
        return
    if not isinstance(backbone.get("init_args"), Namespace):
        backbone.init_args = Namespace(**dict(backbone.get("init_args") or {}))
    given = backbone.init_args.as_dict()
    for name in fill_architecture(import_class(backbone.class_path), given, pretrained):
        backbone.init_args[name] = given[name]


def run_callbacks(trainer_config: dict[str, Any], subcommand: str | None, argv: list[str]) -> list[Any]:
    """The config's callbacks, made to agree with Lightning's own flags, plus zoo's run callbacks.

    - ``enable_progress_bar: false``: a `ProgressMonitor` becomes its quiet `ThroughputMonitor` (metrics
      still logged, no lines), where Lightning would refuse the run.
    - ``enable_checkpointing: false``: the config's checkpoint callbacks are dropped (said in one line),
      where Lightning would refuse the run.
    - ``fit``: `FinalCheckpoint` (``last.ckpt`` at the final step; signals save and exit non-zero).
    - `zoo.tasks.monitor.ModelSummary` in place of Lightning's, unless the summary is off or given.
    """
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary

    from zoo.tasks.checkpointing import FinalCheckpoint, resume_command
    from zoo.tasks.monitor import ModelSummary, ProgressMonitor

    callbacks = trainer_config.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    if trainer_config.get("enable_progress_bar") is False:
        callbacks = [c.quiet() if isinstance(c, ProgressMonitor) else c for c in callbacks]
    if trainer_config.get("enable_checkpointing") is False:
        dropped = [c for c in callbacks if isinstance(c, Checkpoint)]
        if dropped:
            print(
                f"zoo: enable_checkpointing is false: the config's {len(dropped)} checkpoint callback(s) are "
                "left out; this run saves no checkpoint",
                file=sys.stderr,
            )
        callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)]
    if trainer_config.get("enable_model_summary") is not False and not any(
        isinstance(c, LightningModelSummary) for c in callbacks
    ):
        callbacks.append(ModelSummary())
    if subcommand == "fit":
        callbacks.append(FinalCheckpoint(resume_command(argv)))
    return callbacks


def _migrated_config_files(args: list[str], task: str | None) -> list[str]:
    """``args`` with each ``--config`` file whose model keys an earlier zoo spelled differently
    (`zoo.checkpoint.migrate_config`) replaced by the migrated config, as a YAML string."""
    new = list(args)
    for i, (flag, value) in enumerate(zip(args, list(args[1:]) + [None])):
        joined = isinstance(flag, str) and flag.startswith("--config=")  # --config=FILE, one argument
        if joined:
            value = flag.split("=", 1)[1]
        elif flag not in ("--config", "-c"):
            continue
        if not isinstance(value, str) or not Path(value).is_file():
            continue
        config = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
        migrated = migrate_config(config, task)
        if migrated is not config:
            text = yaml.safe_dump(migrated, sort_keys=False)
            if joined:
                new[i] = f"--config={text}"
            else:
                new[i + 1] = text
    return new if new != list(args) else args


def _model_class_path(args: list[str]) -> str | None:
    """The model's ``class_path`` as the command line or its last ``--config`` file names it (``None``:
    neither does)."""
    found = None
    for flag, value in zip(args, list(args[1:]) + [None]):
        if (
            isinstance(flag, str)
            and "=" in flag
            and flag.split("=", 1)[0] in ("--config", "--model", "--model.class_path")
        ):
            flag, value = flag.split("=", 1)
        if flag in ("--model", "--model.class_path") and isinstance(value, str):
            found = value
        elif flag in ("--config", "-c") and isinstance(value, str) and Path(value).is_file():
            model = (yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}).get("model")
            if isinstance(model, dict) and isinstance(model.get("class_path"), str):
                found = model["class_path"]
    return found


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
    """Console entry point ``zoo``: ``fit|validate|test|predict`` (LightningCLI) and ``export``.

    An error a user can act on (a config value, a data file, a checkpoint) ends the command with one
    ``error: ...`` line and exit code 1; ``--debug`` or ``ZOO_DEBUG=1`` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("ZOO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    quiet_known_noise()
    try:
        if argv and argv[0] == "export":
            from zoo.export import main as export_main

            export_main(argv[1:])
            return
        ZooCLI(
            parser_class=ZooArgumentParser,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=argv,
            auto_configure_optimizers=False,
        )
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into a message
        if debug:
            raise
        sys.stderr.write(f"error: {_message(err)}\n(--debug or ZOO_DEBUG=1 shows the traceback)\n")
        sys.exit(1)


def quiet_known_noise() -> None:
    """Silence messages that are noise for a zoo run: Lightning's litlogger advertisement, a torch pytree
    deprecation inside Lightning, and warnings zoo has made moot (the checkpoint folder of a resumed run
    is not empty by design; ``validate``/``predict`` read checkpoints from another folder by design)."""
    for message in (
        r".*isinstance\(treespec, LeafSpec\)",
        r"LightningCLI's args parameter is intended",
        r"The dirpath has changed from",
        r"Checkpoint directory .* exists and is not empty",
    ):
        warnings.filterwarnings("ignore", message=message)
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(_NoTips())


class _NoTips(logging.Filter):
    """Lightning's tips, and its note that zoo's own model summary replaces the default one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip", "Trainer already configured with model summary"))


_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def _message(err: BaseException) -> str:
    """The error's own words; its type only where the words alone would not say what went wrong. An
    error a constructor raised while jsonargparse built the class is unwrapped from its Union report."""
    while err.__cause__ is not None and str(err).startswith(_WRAPPERS):
        err = err.__cause__
    text = str(err).strip() or type(err).__name__
    if isinstance(err, ValueError | OSError | FloatingPointError | ImportError):
        return text
    return f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    main(sys.argv[1:])
