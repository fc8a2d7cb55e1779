"""The ``zoo`` command (and ``python -m zoo``). Its top-level help answers at once: importing Lightning
takes seconds, and only a subcommand needs it."""

from __future__ import annotations

import sys

HELP = """\
usage: zoo [--debug] {fit,validate,test,predict,export} ...

Train, evaluate and export Transformer language models with the Lightning Trainer.

subcommands:
  fit        train a model (continue a killed run with --ckpt_path last)
  validate   one evaluation pass over the validation data
  test       one evaluation pass over the test data (perplexity of a file: --data.init_args.test_file)
  predict    predictions or generations, written under trainer.default_root_dir
  export     write a Hugging Face-format directory (safetensors, config.json, tokenizer) from a checkpoint

  zoo fit --config recipes/gpt2/shakespeare-char.yaml [--KEY VALUE ...]
  zoo SUBCOMMAND --help   lists every key of that subcommand

options:
  -h, --help   show this message and exit
  --debug      show the traceback of an error instead of one line (or set ZOO_DEBUG=1)
"""


def main(args: list[str] | None = None) -> None:
    """Console entry point: ``zoo [--debug] SUBCOMMAND ...``."""
    argv = list(sys.argv[1:] if args is None else args)
    rest = [a for a in argv if a != "--debug"]
    if not rest or rest[0] in ("-h", "--help"):
        (sys.stdout if rest else sys.stderr).write(HELP)
        sys.exit(0 if rest else 2)
    from zoo.cli import main as run

    run(argv)


if __name__ == "__main__":
    main()
