"""``zoo fit|validate|test|predict --config recipes/....yaml``: LightningCLI with zoo's links."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI


class ZooCLI(LightningCLI):
    """LightningCLI whose data-derived sizes flow into the model, so no number is typed twice.

    ``data.vocab_size`` (known once the tokenizer exists) is linked to
    ``model.init_args.backbone.init_args.vocab_size``.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - LightningArgumentParser
        parser.link_arguments(
            "data.vocab_size", "model.init_args.backbone.init_args.vocab_size", apply_on="instantiate"
        )


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
