"""Settings that travel together, as frozen dataclasses a task takes whole (like `zoo.nn.LoRA` and
`zoo.tasks.adversarial.Adversarial`): in YAML a nested mapping (``decoding: {num_beams: 4}``), on the
command line ``--model.init_args.decoding.num_beams=4``, in a checkpoint's hyper-parameters plain data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import check_non_negative
from zoo.tasks.decoding import check_sampling

SAMPLING = ("temperature", "top_k", "top_p", "stop_tokens")
"""`Decoding` fields only sampling uses (`zoo.tasks.CausalLM`); a search over an encoder's source does not."""
SOURCE_BOUND = ("max_len_a", "min_length", "no_repeat_ngram_size")
"""`Decoding` fields only the encoder-decoder tasks use (`zoo.tasks.Seq2SeqTask`)."""


@dataclass(frozen=True)
class Decoding:
    """How a task decodes (``zoo test``, ``zoo predict``, ``generate``): one name per idea for every task.

    Args:
        num_beams: Beams kept per input: 1 is greedy (or, for `zoo.tasks.CausalLM`, sampling as
            ``temperature``, ``top_k`` and ``top_p`` say); more decodes by beam search, which does not
            sample.
        max_new_tokens: Most tokens generated per input. The encoder-decoder tasks count the end token and
            add ``max_len_a`` times the source's length; never longer than the backbone's positions.
        max_len_a: Encoder-decoder tasks: outputs are at most ``max_len_a * source_length +
            max_new_tokens`` tokens.
        min_length: Encoder-decoder tasks: fewest tokens of an output, the end token not counted (0: none).
        no_repeat_ngram_size: Encoder-decoder tasks: no n-gram of this many tokens occurs twice in an
            output (0: off).
        length_penalty: Beam search ranks hypotheses by ``log_prob / length ** length_penalty`` (0: by
            probability alone; larger: longer output).
        temperature: `zoo.tasks.CausalLM` sampling temperature (0 means greedy).
        top_k: `zoo.tasks.CausalLM`: sample only among the k most likely tokens (``None``: all).
        top_p: `zoo.tasks.CausalLM`: nucleus sampling threshold (``None``: off).
        stop_tokens: `zoo.tasks.CausalLM`: token ids that end a generated sequence.
    """

    num_beams: int = 1
    max_new_tokens: int = 200
    max_len_a: float = 0.0
    min_length: int = 0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_sampling(
            "decoding",
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            num_beams=self.num_beams,
        )
        check_non_negative(
            "decoding",
            max_len_a=self.max_len_a,
            min_length=self.min_length,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )

    @classmethod
    def of(cls, value: Decoding | dict[str, Any]) -> Decoding:
        """``value`` as a `Decoding`: a checkpoint's plain dict comes back as the object."""
        return cls(**value) if isinstance(value, dict) else value

    def plain(self) -> dict[str, Any]:
        """The fields as plain data, as a checkpoint's hyper-parameters hold them (``weights_only`` loads)."""
        return dataclasses.asdict(self)

    def check_unused(self, owner: str, names: tuple[str, ...]) -> None:
        """Refuse fields that ``owner`` does not use but that are set away from their defaults.

        Raises:
            ValueError: ``"decoding.NAME: OWNER does not use it"``.
        """
        for name in names:
            default = Decoding.__dataclass_fields__[name]
            wanted = default.default_factory() if callable(default.default_factory) else default.default
            if getattr(self, name) != wanted:
                raise ValueError(f"decoding.{name}: {owner} does not use it (leave it at {wanted!r})")
