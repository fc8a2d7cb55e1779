"""What every zoo data module shares: a lazily built tokenizer that travels with checkpoints, and a
training sampler that resumes mid-epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from tokenizers import Tokenizer

from zoo.data.chat import ChatTemplate, load_chat_template
from zoo.data.resumable import ResumableSampler, TrainPosition, loader_position
from zoo.models.hf_io import PACKAGE_PREFIX


class TokenizedDataModule(L.LightningDataModule):
    """Base class: subclasses set ``tokenizer_spec`` and implement ``_build_tokenizer``, and route their
    training sampler through ``_resumable``.

    Checkpoints hold the tokenizer's JSON (a reloaded model can always decode its own ids, and resuming
    with different data is refused), the training position (a resumed run continues with exactly the
    next batch) and, for a tokenizer read from a model file, that model's chat template and special
    tokens (``zoo export`` writes them back).
    """

    tokenizer_spec: str = ""

    def __init__(self) -> None:
        super().__init__()
        self._tokenizer: Tokenizer | None = None
        self._train_sampler: ResumableSampler | None = None
        self._resume_at = TrainPosition()

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer, loaded or trained (and cached) on first use."""
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids; linked to the model's ``vocab_size`` by the CLI."""
        return self.tokenizer.get_vocab_size()

    def _build_tokenizer(self) -> Tokenizer:
        raise NotImplementedError

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The chat template of the model file the tokenizer comes from (`zoo.data.chat`); ``None`` for
        a tokenizer zoo trains, or a model without one."""
        if not hasattr(self, "_chat_template"):
            spec = str(self.tokenizer_spec)
            from_file = spec.startswith(PACKAGE_PREFIX) or Path(spec).expanduser().exists()
            self._chat_template = load_chat_template(spec) if from_file else None
        return self._chat_template

    def _seed(self) -> int:
        """The training order's seed: the module's ``shuffle_seed`` when it has one set, else the seed given
        to ``seed_everything`` (0 if none)."""
        own = getattr(self, "shuffle_seed", None)
        return own if own is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _resumable(self, sampler: ResumableSampler) -> ResumableSampler:
        """Register the training sampler, skipping ahead if a checkpoint was restored."""
        self._train_sampler = sampler
        sampler.resume_from(self._resume_at)
        return sampler

    def state_dict(self) -> dict[str, Any]:
        position = loader_position(self.trainer, self._train_sampler)
        chat = self.chat_template.state() if self.chat_template is not None else {}
        return {"tokenizer": self.tokenizer.to_str(), "train_position": position.as_dict(), **chat}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_tokenizer(state_dict.get("tokenizer"))
        self._resume_at = TrainPosition(**state_dict.get("train_position", {}))
        if self._train_sampler is not None:
            self._train_sampler.resume_from(self._resume_at)

    def check_tokenizer(self, saved: str | None) -> None:
        """Refuse a checkpoint's tokenizer (its JSON; ``None``: not recorded) that differs from this one's.

        Raises:
            ValueError: Names both vocabulary sizes and where this module's tokenizer comes from.
        """
        if saved is not None and saved != self.tokenizer.to_str():
            saved_vocab = Tokenizer.from_str(saved).get_vocab_size()
            raise ValueError(
                f"the checkpoint was trained with a different tokenizer (vocab {saved_vocab}) than this "
                f"data module builds from {self.tokenizer_spec!r} (vocab {self.vocab_size}); use the same "
                "files and settings, or point `tokenizer` at the run's tokenizer"
            )
