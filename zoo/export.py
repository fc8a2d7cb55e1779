"""``zoo export --ckpt_path ... --output DIR``: a Hugging Face model directory from a zoo checkpoint.

The directory holds ``model.safetensors`` and ``config.json`` for the transformers class that computes
what the checkpoint's task computes, and the run's tokenizer (``tokenizer.json`` + ``tokenizer_config.json``,
loadable with ``AutoTokenizer``). It is written atomically: complete, or not at all.

- ``CausalLM`` over ``GPT2``: ``GPT2LMHeadModel``.
- ``MaskedLM`` over ``Bert``: ``BertForPreTraining`` (``nsp: true``) or ``BertForMaskedLM`` (``nsp: false``).
- ``SequenceClassification``: ``BertForSequenceClassification`` (``pooling: pooler``) or
  ``GPT2ForSequenceClassification`` (``pooling: last`` and a head whose bias is zero).
- ``TokenClassification``: ``BertForTokenClassification`` or ``GPT2ForTokenClassification``.

A classification head transformers cannot reproduce (another pooling, a GPT-2 head with a bias) is not
exported: the directory then holds the backbone (``BertModel`` / ``GPT2Model``) and the printed line says
why. Translation checkpoints are refused: no transformers class matches zoo's encoder-decoder.

A checkpoint trained with LoRA adapters (a task's ``lora``) is exported with the adapters merged into
plain weights. With ``--peft`` the directory also gets ``adapter/``: the adapters in PEFT's format
(``adapter_config.json``, ``adapter_model.safetensors``), which ``peft.PeftModel.from_pretrained`` puts
on the *base* transformers model (the weights training started from, not the merged ones). zoo's fused
query/key/value adapter becomes one adapter per projection of BERT (A shared, B split by rows); a task's
own head is saved whole (PEFT's ``modules_to_save``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any

from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from zoo.checkpoint import CheckpointError, read_checkpoint, upgrade_state_dict
from zoo.data.labelled import pad_token_id
from zoo.data.tokenizers import EOT, UNK
from zoo.data.wordpiece import special_token_ids
from zoo.models.bert import Bert
from zoo.models.bert import convert as bert_convert
from zoo.models.gpt2 import GPT2
from zoo.models.gpt2 import convert as gpt2_convert
from zoo.models.hf_io import LabelHead, read_config, tokenizer_files
from zoo.models.spec import import_class
from zoo.nn.lora import lora_layers, merge_lora
from zoo.tasks import CausalLM, MaskedLM, SequenceClassification, TokenClassification, Translation
from zoo.tasks.base import BackboneTask

_CONVERTERS: dict[type[nn.Module], ModuleType] = {GPT2: gpt2_convert, Bert: bert_convert}


def main(argv: list[str]) -> None:
    """``zoo export``'s command line (the arguments after ``export``)."""
    parser = argparse.ArgumentParser(
        prog="zoo export",
        description="Write a Hugging Face model directory (safetensors weights, config.json, tokenizer) "
        "from a zoo checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the .ckpt file a zoo task wrote")
    parser.add_argument("--output", required=True, help="the directory to write (created)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists and is not empty"
    )
    parser.add_argument(
        "--peft",
        action="store_true",
        help="also write OUTPUT/adapter: the checkpoint's LoRA adapters in PEFT's format, for the base model",
    )
    args = parser.parse_args(argv)
    export_checkpoint(args.ckpt_path, args.output, overwrite=args.overwrite, peft=args.peft)


def export_checkpoint(
    ckpt_path: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False, peft: bool = False
) -> Path:
    """Write the Hugging Face directory of a zoo checkpoint and print one line saying what went where.

    Args:
        ckpt_path: A checkpoint written by a zoo task (``zoo fit`` or a ``Trainer``).
        output: The directory to write; replaced whole (atomically) when ``overwrite``.
        overwrite: Replace ``output`` when it exists and is not empty.
        peft: Also write ``output/adapter``, the LoRA adapters in PEFT's format (needs a checkpoint
            trained with ``lora``).

    Returns:
        The written directory (absolute).

    Raises:
        FileNotFoundError: No file at ``ckpt_path``.
        FileExistsError: ``output`` is a file, or a non-empty directory without ``overwrite``.
        CheckpointError: The file is not a loadable zoo checkpoint (truncated, not PyTorch, another
            program's, weights that do not fit its task).
        ValueError: The task or backbone has no transformers class (the message says which and why);
            ``peft`` for a checkpoint without adapters or with an adapter transformers has no layer for.
    """
    source, target = Path(ckpt_path).expanduser(), Path(output).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} not found")
    _check_output(target, source, overwrite)
    checkpoint = read_checkpoint(source)
    task = _rebuild_task(checkpoint, source)
    convert = _CONVERTERS.get(type(task.backbone))
    if convert is None:
        raise ValueError(
            f"{source}: the backbone is a {type(task.backbone).__qualname__}; zoo export writes "
            "zoo.models.gpt2.GPT2 and zoo.models.bert.Bert backbones only"
        )
    tokenizer, saved_labels = _saved_data_state(checkpoint)
    head, note = _head(task, convert, saved_labels, source)
    adapter = _peft_adapter(task, convert, head, source) if peft else None
    merge_lora(task.backbone)  # plain weights: what transformers computes
    files = None
    if tokenizer is not None:
        files = tokenizer_files(
            tokenizer.to_str(),
            special_tokens=_special_tokens(tokenizer),
            max_seq_len=task.backbone.max_seq_len,
            input_names=convert.INPUT_NAMES,
        )
    try:
        path = convert.save_hf(
            task.backbone, target, head=head, files=files, **_token_ids(task, tokenizer, head)
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    if adapter is not None:
        _write_adapter(path / "adapter", *adapter)
    architecture = read_config(path)["architectures"][0]
    what = (
        f"{architecture} + tokenizer"
        if files
        else f"{architecture} (no tokenizer: the checkpoint holds none)"
    )
    if adapter is not None:
        what += " (LoRA merged), PEFT adapter for the base model in adapter/"
    elif getattr(task, "lora", None) is not None:
        what += " (LoRA merged)"
    print(f"exported {source} as {what} to {target}" + (f"; {note}" if note else ""))
    return path


def _check_output(target: Path, source: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"--output {target} is a file; give the path of a directory to write")
    if source.resolve().is_relative_to(target.resolve()):  # --overwrite would delete the checkpoint
        raise FileExistsError(f"--output {target} holds the checkpoint {source}; choose another directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"--output {target} exists and is not empty; pass --overwrite to replace it")


def _rebuild_task(checkpoint: dict[str, Any], source: Path) -> BackboneTask:
    """The checkpoint's zoo task (its zoo class, a user's subclass's extra arguments left out) with the
    checkpoint's weights, in eval mode."""
    family = checkpoint.get("zoo_task")
    if not isinstance(family, str):
        raise CheckpointError(
            f"{source}: not a zoo task's checkpoint (no 'zoo_task' entry); zoo export reads checkpoints "
            "written by `zoo fit` or a Trainer fitting a zoo task"
        )
    try:
        cls = import_class(family)
    except ImportError as err:
        raise CheckpointError(f"{source}: written by a task that does not import here ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, BackboneTask)):
        raise CheckpointError(f"{source}: 'zoo_task' names {family}, which is not a zoo task")
    if issubclass(cls, Translation):
        raise ValueError(
            f"{source}: a Translation checkpoint; transformers has no class that computes zoo's "
            "encoder-decoder Transformer (its norm placement, positions and shared embeddings are not "
            "BART's, T5's or Marian's), so it cannot be exported"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams.get("backbone"), dict):
        raise CheckpointError(f"{source}: the checkpoint does not record its backbone's class and arguments")
    accepted = inspect.signature(cls.__init__).parameters
    task = cls(**{k: v for k, v in hparams.items() if k in accepted})
    # an earlier zoo's weight names
    result = task.load_state_dict(upgrade_state_dict(checkpoint["state_dict"], task.backbone), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: its weights do not fit a {cls.__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (a subclass with modules of its own cannot be exported)"
        )
    return task.eval()


def _saved_data_state(checkpoint: dict[str, Any]) -> tuple[Tokenizer | None, list[str] | None]:
    """The tokenizer and label names a zoo data module stored in the checkpoint (under its class name)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("tokenizer"), str):
            labels = value.get("labels")
            return Tokenizer.from_str(value["tokenizer"]), list(labels) if labels else None
    return None, None


def _head(
    task: BackboneTask, convert: ModuleType, saved_labels: list[str] | None, source: Path
) -> tuple[Any, str | None]:
    """What ``convert.save_hf`` exports as the head, and a note when the task's head is left out."""
    backbone = type(task.backbone).__name__
    if isinstance(task, CausalLM) and convert is gpt2_convert:
        return "lm", None
    if isinstance(task, MaskedLM) and convert is bert_convert:
        return ("pretraining" if task.nsp else "mlm"), None
    if not isinstance(task, SequenceClassification | TokenClassification):
        raise ValueError(f"{source}: no transformers class for a {type(task).__name__} over {backbone}")
    linear = task.head[-1]
    names = task.label_names or saved_labels or [str(i) for i in range(linear.out_features)]
    head = LabelHead(
        weight=linear.weight.detach(),
        bias=linear.bias.detach(),
        label_names=list(names),
        pooling=task.pooling if isinstance(task, SequenceClassification) else None,
        problem_type=getattr(task, "problem_type", "single_label"),
        dropout=float(task.head[0].p),
    )
    problem = convert.head_mismatch(head)
    if problem is None:
        return head, None
    return "none", f"the classification head was not exported (the directory holds the backbone): {problem}"


def _peft_adapter(
    task: BackboneTask, convert: ModuleType, head: Any, source: Path
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """PEFT's ``adapter_config.json`` dict and ``adapter_model.safetensors`` tensors for the task's
    adapters on the transformers model `convert.save_hf` writes for ``head``."""
    layers, lora = lora_layers(task.backbone), getattr(task, "lora", None)
    if not layers or lora is None:
        raise ValueError(f"{source}: --peft: the checkpoint has no LoRA adapters (trained without `lora`)")
    tensors: dict[str, Tensor] = {}
    targets: list[str] = []
    for name, layer in layers.items():
        try:
            theirs = convert.hf_linear_names(name, head=head)
        except KeyError:
            raise ValueError(
                f"{source}: --peft: the adapted layer {name} has no transformers counterpart in the exported "
                "model; export without --peft (the merged weights include it)"
            ) from None
        # a fused projection's adapter is one per projection: A shared, B split by output rows
        for module, b in zip(theirs, layer.lora_B.detach().chunk(len(theirs), dim=0)):  # (out/k, r) each
            tensors[f"base_model.model.{module}.lora_A.weight"] = layer.lora_A.detach().clone()
            tensors[f"base_model.model.{module}.lora_B.weight"] = b.clone()
            targets.append(module)
    saved = None
    if isinstance(head, LabelHead):  # the task's head trained whole
        saved = [convert.hf_head_name(head)]
        tensors[f"base_model.model.{saved[0]}.weight"] = head.weight.clone()
        if saved[0] != "score":  # GPT2ForSequenceClassification's score has no bias
            tensors[f"base_model.model.{saved[0]}.bias"] = head.bias.clone()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(task, "pretrained", None),
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "fan_in_fan_out": convert.PEFT_FAN_IN_FAN_OUT,
        "bias": "none",
        "modules_to_save": saved,
        "inference_mode": True,
    }
    return config, tensors


def _write_adapter(directory: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write a PEFT adapter directory: to a temporary name first, renamed when complete."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial / "adapter_model.safetensors"))
    os.replace(partial, directory)


def _special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """Token strings by role, for the tokens the tokenizer itself treats as special (so that transformers
    splits text exactly as zoo does)."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    roles: dict[str, str] = {}
    with suppress(ValueError):  # not a BERT WordPiece tokenizer
        roles.update({role: tokenizer.id_to_token(i) for role, i in special_token_ids(tokenizer).items()})
    if tokenizer.token_to_id(EOT) is not None:
        roles.update(bos=EOT, eos=EOT)
    if tokenizer.token_to_id(UNK) is not None:
        roles.setdefault("unk", UNK)
    roles.setdefault("pad", tokenizer.id_to_token(pad_token_id(tokenizer)))
    return {role: token for role, token in roles.items() if token in special}


def _token_ids(task: BackboneTask, tokenizer: Tokenizer | None, head: Any) -> dict[str, int | None]:
    """GPT-2's config ids: ``<|endoftext|>``, and the id zoo padded with (how transformers' sequence
    classifier finds each row's last token). BERT's come with the model."""
    if not isinstance(task.backbone, GPT2) or tokenizer is None:
        return {}
    pad = pad_token_id(tokenizer)
    sequence_head = isinstance(head, LabelHead) and head.pooling is not None
    is_special = tokenizer.id_to_token(pad) in _special_tokens(tokenizer).values()
    return {
        "eot_token_id": tokenizer.token_to_id(EOT),
        "pad_token_id": pad if sequence_head or is_special else None,
    }
