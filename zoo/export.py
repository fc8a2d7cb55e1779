"""``zoo export --ckpt_path ... --output DIR``: a Hugging Face model directory from a zoo checkpoint, or with
``--format gguf`` one GGUF file for llama.cpp.

The directory holds ``model.safetensors`` and ``config.json`` for the transformers class that computes
what the checkpoint's task computes, and the run's tokenizer (``tokenizer.json`` + ``tokenizer_config.json``,
loadable with ``AutoTokenizer``, with the chat template and special tokens of a tokenizer that came from a
model file). It is written atomically: complete, or not at all.

``--format gguf`` writes a ``CausalLM`` over ``Llama`` as llama.cpp's ``llama`` architecture
(`zoo.models.llama.gguf_write`): weights in ``--gguf_type`` (``f32``, ``f16``, ``bf16``, ``q8_0``), the
tokenizer and the chat template, in one file; other tasks and backbones are refused.

- ``CausalLM``: ``GPT2LMHeadModel`` (``GPT2``) or ``LlamaForCausalLM`` (``Llama``).
- ``MaskedLM`` over ``Bert``: ``BertForPreTraining`` (``nsp: true``) or ``BertForMaskedLM`` (``nsp: false``).
- ``SequenceClassification``: ``BertForSequenceClassification`` (``pooling: pooler``), or
  ``GPT2ForSequenceClassification`` / ``LlamaForSequenceClassification`` (``pooling: last`` and a head
  whose bias is zero). ``pooling: first`` becomes the family's ``*ForTokenClassification``, whose logits
  at the first token (``logits[:, 0]``, BERT's [CLS]) are the task's: no transformers sequence classifier
  reads that hidden state directly (BERT's passes it through its pooler, ``tanh(Linear(h))``, first).
- ``TokenClassification``: ``BertForTokenClassification``, ``GPT2ForTokenClassification`` or
  ``LlamaForTokenClassification``.
- ``QuestionAnswering``: ``BertForQuestionAnswering``, ``GPT2ForQuestionAnswering`` or
  ``LlamaForQuestionAnswering`` (start and end logits; zoo sets them to the lowest value at padding).
- ``Summarization`` / ``Translation`` over ``BertEncoderDecoder`` (BERT2BERT): ``EncoderDecoderModel`` with
  a ``BertModel`` encoder and a ``BertGenerationDecoder``.

A classification head transformers cannot reproduce (``pooling: mean``, a GPT-2 or Llama ``last`` head
with a bias) is not exported: the directory then holds the backbone (``BertModel`` / ``GPT2Model`` /
``LlamaModel``) and the printed line says why. Refused with a one-line error that says why: an
encoder-decoder over ``zoo.models.seq2seq.Transformer`` (no transformers class computes it), a GPT-2 with
``bias: false``, a Llama with positions other than rotary, another backbone class, and a task subclass with
modules of its own.

A checkpoint trained with LoRA adapters (a task's ``lora``) is exported with the adapters merged into
plain weights. With ``--peft`` the directory also gets ``adapter/``: the adapters in PEFT's format
(``adapter_config.json``, ``adapter_model.safetensors``), which ``peft.PeftModel.from_pretrained`` puts
on the *base* transformers model (the weights training started from, loaded in the class of the export,
not the merged weights). zoo's fused query/key/value adapter becomes one adapter per projection of BERT
(A shared, B split by rows); a task's own head is saved whole (PEFT's ``modules_to_save``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import Tensor

from zoo.checkpoint import (
    CheckpointError,
    init_arguments,
    migrate_hparams,
    read_checkpoint,
    upgrade_state_dict,
)
from zoo.data.gguf_tokenizer import write_gguf_tokenizer
from zoo.data.labelled import pad_token_id
from zoo.data.tokenizers import EOT, UNK
from zoo.data.wordpiece import special_token_ids
from zoo.io import atomic_directory
from zoo.models.hf_io import (
    TOKEN_ROLES,
    Converter,
    LabelHead,
    SpanHead,
    converter,
    read_config,
    tokenizer_files,
)
from zoo.models.llama import Llama
from zoo.models.llama.gguf_write import GGUF_TYPES, save_gguf
from zoo.models.spec import import_class
from zoo.nn.lora import lora_layers, merge_lora
from zoo.runs import checkpoint_in
from zoo.tasks import (
    CausalLM,
    MaskedLM,
    QuestionAnswering,
    Seq2SeqTask,
    SequenceClassification,
    TokenClassification,
)
from zoo.tasks.base import BackboneTask

_FIRST_TOKEN_NOTE = (
    "pooling='first' is exported per token: no transformers sequence classifier reads the first token's "
    "hidden state directly (BERT's adds its tanh pooler), so take logits[:, 0], zoo's logits"
)


def main(argv: list[str]) -> None:
    """``zoo export``'s command line (the arguments after ``export``)."""
    parser = argparse.ArgumentParser(
        prog="zoo export",
        description="Write a Hugging Face model directory (safetensors weights, config.json, tokenizer, "
        "chat template) from a zoo checkpoint, or with --format gguf one GGUF file that llama.cpp runs "
        "(a CausalLM over Llama).",
    )
    parser.add_argument("--ckpt_path", required=True, help="the .ckpt file a zoo task wrote")
    parser.add_argument(
        "--output", required=True, help="the directory to write (created); with --format gguf, the .gguf file"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it exists (and, a directory, is not empty)",
    )
    parser.add_argument(
        "--format",
        choices=("hf", "gguf"),
        default="hf",
        help="hf: a Hugging Face directory (default); gguf: one llama.cpp GGUF file (CausalLM over Llama)",
    )
    parser.add_argument(
        "--gguf_type",
        choices=tuple(GGUF_TYPES),
        default=None,
        help="with --format gguf: the weights' type, f32 (default, exact), f16, bf16 or q8_0 (8-bit blocks)",
    )
    parser.add_argument(
        "--peft",
        action="store_true",
        help="also write OUTPUT/adapter: the checkpoint's LoRA adapters in PEFT's format, for the base model",
    )
    args = parser.parse_args(argv)
    if args.format != "gguf" and args.gguf_type is not None:
        raise ValueError("--gguf_type is for --format gguf")
    if args.format == "gguf":
        if args.peft:
            raise ValueError("--peft is for --format hf (a GGUF file holds the merged weights)")
        export_gguf(args.ckpt_path, args.output, overwrite=args.overwrite, gguf_type=args.gguf_type or "f32")
        return
    export_checkpoint(args.ckpt_path, args.output, overwrite=args.overwrite, peft=args.peft)


@dataclasses.dataclass(frozen=True)
class _DataState:
    """What a zoo data module stored in the checkpoint: the tokenizer, label names, and for a tokenizer that
    came from a model file its chat template (jinja) and special tokens by role (``bos``, ``eos``, ...)."""

    tokenizer: Tokenizer | None = None
    labels: list[str] | None = None
    chat_template: str | None = None
    special_tokens: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How a task's backbone is written: its family's `Converter` (``converter.save(backbone, directory,
    files=..., **kwargs)``; the inputs its transformers class takes, what the tokenizer returns), the
    ``head`` (for ``--peft``; ``None`` for an encoder-decoder), and a note for the printed line."""

    converter: Converter
    kwargs: dict[str, Any]
    head: Any = None
    note: str | None = None


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
        FileNotFoundError: No file at ``ckpt_path`` (a run folder means its ``last.ckpt``:
            `zoo.runs.checkpoint_in`).
        FileExistsError: ``output`` is a file, or a non-empty directory without ``overwrite``.
        CheckpointError: The file is not a loadable zoo checkpoint (truncated, not PyTorch, another
            program's, weights that do not fit its task).
        ValueError: The task or backbone has no transformers class (the message says which and why);
            ``peft`` for a checkpoint without adapters or with an adapter transformers has no layer for.
    """
    source, target = Path(checkpoint_in(Path(ckpt_path).expanduser())), Path(output).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} not found")
    _check_output(target, source, overwrite)
    checkpoint = read_checkpoint(source)
    task = _rebuild_task(checkpoint, source)
    state = _saved_data_state(checkpoint)
    tokenizer = state.tokenizer
    plan = _plan(task, tokenizer, state.labels, source, state.special_tokens)
    adapter = _peft_adapter(task, plan, source) if peft else None
    merge_lora(task.backbone)  # plain weights: what transformers computes
    files = None
    if tokenizer is not None:
        files = tokenizer_files(
            tokenizer.to_str(),
            special_tokens=_special_tokens(tokenizer, state.special_tokens),
            max_seq_len=task.backbone.max_seq_len,
            input_names=plan.converter.input_names,
            chat_template=state.chat_template,
        )
    try:
        path = plan.converter.save(task.backbone, target, files=files, **plan.kwargs)
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
    print(f"exported {source} as {what} to {target}" + (f"; {plan.note}" if plan.note else ""))
    return path


def export_gguf(
    ckpt_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    gguf_type: str = "f32",
) -> Path:
    """Write a ``CausalLM`` over ``Llama`` as one GGUF file (`zoo.models.llama.gguf_write.save_gguf`: LoRA
    merged, the tokenizer and chat template included) and print one line saying what went where.

    Args:
        ckpt_path: A checkpoint written by a zoo task (``zoo fit`` or a ``Trainer``).
        output: The ``.gguf`` file to write (atomically).
        overwrite: Replace ``output`` when it exists.
        gguf_type: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (`zoo.models.llama.gguf_write.GGUF_TYPES`).

    Returns:
        The written file.

    Raises:
        FileNotFoundError: No file at ``ckpt_path``.
        FileExistsError: ``output`` is a directory, or exists without ``overwrite``.
        CheckpointError: The file is not a loadable zoo checkpoint.
        ImportError: No ``gguf`` package.
        ValueError: Another task or backbone, no tokenizer in the checkpoint, or one llama.cpp cannot read.
    """
    source, target = Path(checkpoint_in(Path(ckpt_path).expanduser())), Path(output).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} not found")
    if target.is_dir():
        raise FileExistsError(f"--output {target} is a directory; give the path of the .gguf file to write")
    if target.exists() and not overwrite:
        raise FileExistsError(f"--output {target} exists; pass --overwrite to replace it")
    checkpoint = read_checkpoint(source)
    task = _rebuild_task(checkpoint, source)
    backbone = type(task.backbone)
    if backbone is not Llama:
        raise ValueError(
            f"{source}: --format gguf writes zoo.models.llama.Llama backbones (llama.cpp's 'llama'), "
            f"not a {backbone.__module__}.{backbone.__qualname__}; export it without --format gguf"
        )
    if not isinstance(task, CausalLM):
        raise ValueError(
            f"{source}: --format gguf writes a CausalLM's language model, not a {type(task).__name__}; "
            "export it without --format gguf"
        )
    state = _saved_data_state(checkpoint)
    if state.tokenizer is None:
        raise ValueError(f"{source}: the checkpoint holds no tokenizer, and a GGUF file must carry one")
    merge_lora(task.backbone)
    try:
        special = _special_tokens(state.tokenizer, state.special_tokens)

        def add_tokenizer(writer: Any, vocab_size: int) -> None:
            write_gguf_tokenizer(
                writer,
                state.tokenizer,
                vocab_size=vocab_size,
                special_tokens=special,
                chat_template=state.chat_template,
            )

        path = save_gguf(task.backbone, target, add_tokenizer=add_tokenizer, gguf_type=gguf_type)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    what = f"GGUF (llama, {GGUF_TYPES[gguf_type]}) + tokenizer"
    what += " + chat template" if state.chat_template else ""
    what += " (LoRA merged)" if getattr(task, "lora", None) is not None else ""
    print(f"exported {source} as {what} to {target}")
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
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams.get("backbone"), dict):
        raise CheckpointError(f"{source}: the checkpoint does not record its backbone's class and arguments")
    accepted = init_arguments(cls)
    hparams = migrate_hparams(hparams, cls)  # an earlier zoo's spellings
    task = cls(**{k: v for k, v in hparams.items() if k in accepted})
    # an earlier zoo's weight names
    result = task.load_state_dict(upgrade_state_dict(checkpoint["state_dict"], task.backbone), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: its weights do not fit a {cls.__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (a subclass with modules of its own cannot be exported)"
        )
    return task.eval()


def _saved_data_state(checkpoint: dict[str, Any]) -> _DataState:
    """What a zoo data module stored in the checkpoint (under its class name): the tokenizer, label names,
    chat template and special tokens (``{"bos_token": "<|im_start|>", ...}``; ``bos`` is read too)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("tokenizer"), str):
            labels, template = value.get("labels"), value.get("chat_template")
            special = value.get("special_tokens") or {}
            roles = {str(role).removesuffix("_token"): token for role, token in special.items()}
            return _DataState(
                tokenizer=Tokenizer.from_str(value["tokenizer"]),
                labels=list(labels) if labels else None,
                chat_template=template if isinstance(template, str) and template else None,
                special_tokens={r: t for r, t in roles.items() if r in TOKEN_ROLES and isinstance(t, str)},
            )
    return _DataState()


def _plan(
    task: BackboneTask,
    tokenizer: Tokenizer | None,
    saved_labels: list[str] | None,
    source: Path,
    special: dict[str, str] | None = None,
) -> _Plan:
    """What to write for ``task``; a `ValueError` names a backbone or task that transformers has no class
    for, and why."""
    backbone = type(task.backbone)
    convert = converter(backbone, exact=True)  # a user's subclass may hold what the family lacks
    if isinstance(task, Seq2SeqTask):
        if convert is None or convert.kind != "encoder-decoder":
            raise ValueError(
                f"{source}: a {type(task).__name__} checkpoint over {backbone.__qualname__}; transformers "
                "has no class that computes zoo's encoder-decoder Transformer (its norm placement, positions "
                "and shared embeddings are not BART's, T5's or Marian's), so it cannot be exported; a "
                "BertEncoderDecoder (BERT2BERT) backbone exports as EncoderDecoderModel"
            )
        ids = {"pad_token_id": task.pad_token_id, "decoder_start_token_id": task.bos_token_id}
        ids["eos_token_id"] = task.eos_token_id
        return _Plan(convert, ids)
    if convert is None or convert.kind == "encoder-decoder":
        raise ValueError(
            f"{source}: the backbone is a {backbone.__qualname__}; zoo export writes zoo.models.gpt2.GPT2, "
            "zoo.models.bert.Bert, zoo.models.llama.Llama and zoo.models.bert.BertEncoderDecoder backbones "
            "only"
        )
    head, note = _head(task, convert, saved_labels, source)
    kwargs = {"head": head, **_token_ids(convert, tokenizer, head, special)}
    return _Plan(convert, kwargs, head, note)


def _head(
    task: BackboneTask, convert: Converter, saved_labels: list[str] | None, source: Path
) -> tuple[Any, str | None]:
    """What ``convert.save`` exports as the head, and a note for the printed line (a head left out, or
    read at the first token only)."""
    backbone = type(task.backbone).__name__
    if isinstance(task, CausalLM) and "lm" in convert.heads:
        return "lm", None
    if isinstance(task, MaskedLM) and "mlm" in convert.heads:
        return ("pretraining" if task.nsp else "mlm"), None
    if isinstance(task, QuestionAnswering):
        linear = task.head[-1]
        return SpanHead(weight=linear.weight.detach(), bias=linear.bias.detach()), None
    if not isinstance(task, SequenceClassification | TokenClassification) or convert.head_mismatch is None:
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
    if head.pooling == "first":  # the same layer at every token; its first row is the task's
        return dataclasses.replace(head, pooling=None), _FIRST_TOKEN_NOTE
    problem = convert.head_mismatch(head)
    if problem is None:
        return head, None
    return "none", f"the classification head was not exported (the directory holds the backbone): {problem}"


def _peft_adapter(task: BackboneTask, plan: _Plan, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """PEFT's ``adapter_config.json`` dict and ``adapter_model.safetensors`` tensors for the task's
    adapters on the transformers model ``plan`` writes."""
    layers, lora = lora_layers(task.backbone), getattr(task, "lora", None)
    if not layers or lora is None:
        raise ValueError(f"{source}: --peft: the checkpoint has no LoRA adapters (trained without `lora`)")
    convert, head = plan.converter, plan.head
    if convert.hf_linear_names is None or convert.head_to_hf is None:
        raise ValueError(
            f"{source}: --peft: PEFT adapters are written for GPT2, Bert and Llama backbones, not a "
            f"{type(task.backbone).__name__}; export without --peft (the merged weights include them)"
        )
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
    if isinstance(head, LabelHead | SpanHead):  # the task's head trained whole
        weights = convert.head_to_hf(head)
        saved = sorted({key.rsplit(".", 1)[0] for key in weights})
        tensors.update({f"base_model.model.{key}": value.clone() for key, value in weights.items()})
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(task, "pretrained", None),
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "fan_in_fan_out": convert.peft_fan_in_fan_out,
        "bias": "none",
        "modules_to_save": saved,
        "inference_mode": True,
    }
    return config, tensors


def _write_adapter(directory: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write a PEFT adapter directory: to a temporary name first, renamed when complete (`zoo.io`)."""
    with atomic_directory(directory) as partial:
        (partial / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        weights = {k: v.contiguous() for k, v in tensors.items()}
        save_file(weights, str(partial / "adapter_model.safetensors"))


def _special_tokens(tokenizer: Tokenizer, saved: dict[str, str] | None = None) -> dict[str, str]:
    """Token strings by role, for the tokens the tokenizer itself treats as special (so that transformers
    splits text exactly as zoo does): the ``saved`` ones (the model file's), else those zoo's tokenizers
    name by convention."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    roles: dict[str, str] = {}
    with suppress(ValueError):  # not a BERT WordPiece tokenizer
        roles.update({role: tokenizer.id_to_token(i) for role, i in special_token_ids(tokenizer).items()})
    if tokenizer.token_to_id(EOT) is not None:
        roles.update(bos=EOT, eos=EOT)
    if tokenizer.token_to_id(UNK) is not None:
        roles.setdefault("unk", UNK)
    roles.setdefault("pad", tokenizer.id_to_token(pad_token_id(tokenizer)))
    roles.update(saved or {})
    return {role: token for role, token in roles.items() if token in special}


def _token_ids(
    convert: Converter, tokenizer: Tokenizer | None, head: Any, saved: dict[str, str] | None = None
) -> dict[str, int | None]:
    """A decoder's (GPT-2's, Llama's) config ids: the tokenizer's ``<|endoftext|>``, and the id zoo padded
    with (how transformers' sequence classifier finds each row's last token); a model file's own begin and
    end tokens (``saved``: a chat model's ``<|im_start|>``, ``<|im_end|>``) as its bos and eos ids, so
    ``generate`` stops at the end of a turn. BERT's come with the model."""
    if convert.kind != "decoder" or tokenizer is None:
        return {}
    pad = pad_token_id(tokenizer)
    sequence_head = isinstance(head, LabelHead) and head.pooling is not None
    is_special = tokenizer.id_to_token(pad) in _special_tokens(tokenizer).values()
    ids = {
        "eot_token_id": tokenizer.token_to_id(EOT),
        "pad_token_id": pad if sequence_head or is_special else None,
    }
    for role in ("bos", "eos"):
        token = (saved or {}).get(role)
        if token is not None and tokenizer.token_to_id(token) is not None:
            ids[f"{role}_token_id"] = tokenizer.token_to_id(token)
    return ids
