"""A model's chat template: where it lives in a model file, and rendering it as transformers does.

Instruction-tuned models ship a Jinja template that turns a list of ``{"role", "content"}`` messages into
the text the model was trained on (SmolLM2: ``<|im_start|>user\\n...<|im_end|>\\n``). A GGUF file keeps it
as ``tokenizer.chat_template``, a Hugging Face directory in ``tokenizer_config.json`` (or
``chat_template.jinja``). `ChatTemplate` renders it in the same sandboxed Jinja environment as
transformers' ``apply_chat_template`` (trimmed blocks, loop controls, ``tojson``, ``raise_exception``,
``strftime_now``) with the tokenizer's special tokens as variables, so the text, and so the token ids,
are the ones the model expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from zoo.models.hf_io import resolve_model_dir
from zoo.models.pretrained import is_gguf

Message = Mapping[str, Any]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

ROLES = ("bos", "eos", "unk", "pad")
"""The special tokens a template may name (as ``bos_token``, ``eos_token``, ...)."""


class ChatTemplate:
    """A chat template and the special tokens it may name.

    Args:
        source: The Jinja text of the template.
        special_tokens: ``{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", ...}``: the variables
            transformers passes to every template.
    """

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ValueError("a chat template must be a non-empty Jinja string")
        self.source = source
        self.special_tokens = dict(special_tokens or {})

    @cached_property
    def _template(self) -> Any:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(
            value: Any,
            ensure_ascii: bool = False,
            indent: int | None = None,
            separators: Any = None,
            sort_keys: bool = False,
        ) -> str:
            return json.dumps(
                value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
            )

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.source)
        except jinja2.TemplateSyntaxError as err:
            raise ValueError(
                f"the chat template is not valid Jinja (line {err.lineno}: {err.message})"
            ) from None

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        """The text of ``messages``; ``add_generation_prompt`` appends the opening of the assistant's
        turn (what ``zoo predict`` continues from).

        Raises:
            ValueError: A message without a string ``role`` and ``content``, or an error the template
                raises (e.g. roles out of order), with its message.
        """
        import jinja2

        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or not all(
                isinstance(message.get(key), str) for key in ("role", "content")
            ):
                raise ValueError(
                    f"message {i}: expected {{'role': str, 'content': str}}, got {message!r:.80}"
                )
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.TemplateError as err:
            raise ValueError(f"the chat template refused the messages: {err}") from None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (``chat_template``, ``special_tokens``): what ``zoo export`` writes."""
        return {"chat_template": self.source, "special_tokens": dict(self.special_tokens)}


def load_chat_template(source: str | os.PathLike) -> ChatTemplate | None:
    """The chat template of a model source, ``None`` when it has none: a GGUF file (``.gguf`` or
    ``python:<package>`` holding one; ``tokenizer.chat_template``) or a Hugging Face model directory
    (``tokenizer_config.json``'s ``chat_template`` or a ``chat_template.jinja`` file; ``python:<package>``
    or a Hub name as `zoo.models.hf_io.resolve_model_dir` finds it), with its special tokens.

    Raises:
        ValueError: The file's template is not a string (transformers' named-template lists are not
            read).
    """
    if is_gguf(source):
        from zoo.data.gguf_tokenizer import gguf_special_tokens
        from zoo.models.llama.gguf import field, open_gguf

        path, reader = open_gguf(source)
        text = field(reader, "tokenizer.chat_template", path, None)
        tokens = gguf_special_tokens(path)
        specials = {f"{role}_token": tokens[role] for role in ROLES if role in tokens}
        return ChatTemplate(text, specials) if text else None
    path = Path(source).expanduser()
    directory = path.parent if path.is_file() else path if path.is_dir() else resolve_model_dir(source)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    text = config.get("chat_template")
    if text is None and (directory / "chat_template.jinja").is_file():
        text = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{config_file}: chat_template is a list of named templates; zoo reads one template")
    specials = {}
    for role in ROLES:
        token = config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, Mapping) else token
        if isinstance(token, str):
            specials[f"{role}_token"] = token
    return ChatTemplate(text, specials)
