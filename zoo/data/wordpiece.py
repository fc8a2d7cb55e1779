"""BERT's WordPiece tokenizer on the Hugging Face ``tokenizers`` library: train one, or load Google's
``vocab.txt`` / a ``tokenizer.json``.

Every tokenizer built here has BERT's pipeline: ``BertNormalizer`` (clean text, split CJK characters,
optional lowercasing, accents stripped when lowercasing unless told otherwise), ``BertPreTokenizer``
(whitespace and punctuation), a WordPiece model with ``##`` continuation pieces, a post-processor that
adds ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with segment ids 0 and 1, and a WordPiece decoder.
It encodes without padding or truncation: batching is the collator's job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""The special tokens, in the order of their ids (0..4) in vocabularies trained by `train_wordpiece`."""
_SPECIAL_NAMES = {"[PAD]": "pad", "[UNK]": "unk", "[CLS]": "cls", "[SEP]": "sep", "[MASK]": "mask"}
CONTINUING_SUBWORD_PREFIX = "##"


def _bert_normalizer(lowercase: bool, strip_accents: bool | None = None) -> normalizers.Normalizer:
    # strip_accents=None: strip them exactly when lowercasing, as Google's uncased BERT does
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )


def _post_processor(tokenizer: Tokenizer) -> processors.TemplateProcessing:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _finish(tokenizer: Tokenizer) -> Tokenizer:
    """Attach the [CLS]/[SEP] template and the WordPiece decoder once the vocabulary is known."""
    tokenizer.post_processor = _post_processor(tokenizer)
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUING_SUBWORD_PREFIX)
    return tokenizer


def _training_input(files_or_iterator: object) -> tuple[list[str] | None, Iterable[str] | None]:
    """(files, None) for a path or a list/tuple of paths; (None, texts) for any other iterable."""
    if isinstance(files_or_iterator, str | os.PathLike):
        files_or_iterator = [files_or_iterator]
    if isinstance(files_or_iterator, list | tuple):
        files = [str(Path(f)) for f in files_or_iterator]
        absent = [f for f in files if not Path(f).is_file()]
        if absent:
            raise FileNotFoundError(
                f"training files not found: {absent[:5]}; to train on texts in memory, pass an iterator "
                "such as iter(texts)"
            )
        return files, None
    if isinstance(files_or_iterator, Iterable):
        return None, files_or_iterator
    raise TypeError(
        f"expected a path, a list of paths or an iterable of texts, got {type(files_or_iterator)}"
    )


def train_wordpiece(
    files_or_iterator: str | os.PathLike | list[str | os.PathLike] | Iterable[str] | Iterator[str],
    *,
    vocab_size: int,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a BERT WordPiece tokenizer.

    Args:
        files_or_iterator: A text file, a list/tuple of text files, or any other iterable of texts (a
            generator, ``iter(list_of_lines)``, a dataset column).
        vocab_size: Size of the final vocabulary, special tokens and alphabet included.
        lowercase: Lowercase (and strip accents) before splitting, like uncased BERT.
        min_frequency: Minimum count of a pair to be merged into a new piece.

    Returns:
        A ``tokenizers.Tokenizer`` whose ids 0..4 are ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
    """
    files, texts = _training_input(files_or_iterator)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = _bert_normalizer(lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
        show_progress=False,
    )
    if files is not None:
        tokenizer.train(files, trainer)
    else:
        tokenizer.train_from_iterator(texts, trainer)
    return _finish(tokenizer)


def _read_vocab(path: Path) -> dict[str, int]:
    # one token per line, id = line number; only the newline is stripped (a few vocabularies hold " ")
    with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first token
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _tokenizer_config(directory: Path) -> dict:
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        return {}
    try:
        return json.loads(config_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}:{err.lineno}: invalid JSON ({err.msg})") from err


def _from_vocab_txt(path: Path, lowercase: bool | None) -> Tokenizer:
    config = _tokenizer_config(path.parent)
    if lowercase is None:
        lowercase = bool(config.get("do_lower_case", True))
    vocab = _read_vocab(path)
    _check_specials(path, [t for t in SPECIAL_TOKENS if t not in vocab])
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = _bert_normalizer(lowercase, config.get("strip_accents"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # never split, skipped when decoding
    return _finish(tokenizer)


def _from_tokenizer_json(path: Path, lowercase: bool | None) -> Tokenizer:
    if lowercase is not None:
        raise ValueError(f"{path}: a tokenizer.json fixes its own normalizer; pass lowercase=None")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for malformed files
        raise ValueError(f"{path}: not a loadable tokenizer.json ({err})") from err
    _check_specials(path, [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None])
    # Sentence-transformers' files (all-MiniLM-L6-v2) bake in padding and truncation to 128 tokens.
    # Padding belongs to the collator and silent truncation loses text, so both are switched off.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _check_specials(path: Path, missing: list[str]) -> None:
    if missing:
        raise ValueError(f"{path}: BERT special token(s) {', '.join(missing)} not in the vocabulary")


def load_wordpiece(path: str | os.PathLike, *, lowercase: bool | None = None) -> Tokenizer:
    """Load a BERT WordPiece tokenizer from a ``vocab.txt``, a ``tokenizer.json`` or a directory
    holding either (``tokenizer.json`` preferred).

    A ``vocab.txt`` gets the BERT pipeline described in the module docstring; ``do_lower_case`` and
    ``strip_accents`` come from a sibling ``tokenizer_config.json`` when present. A ``tokenizer.json``
    is used as saved, except that any padding or truncation stored in it is disabled, so encodings are
    never padded or cut (sentence-transformers' all-MiniLM-L6-v2 stores both, at 128 tokens).

    Args:
        path: File or directory.
        lowercase: For ``vocab.txt`` only: lowercase and strip accents. ``None`` reads ``do_lower_case``
            from ``tokenizer_config.json`` and defaults to ``True`` (uncased BERT).

    Raises:
        FileNotFoundError: Nothing to load at ``path``.
        ValueError: A special token ``[PAD] [UNK] [CLS] [SEP] [MASK]`` is missing (the message names the
            file and the token), or ``lowercase`` was given for a ``tokenizer.json``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "vocab.txt"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.txt")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a vocab.txt, a tokenizer.json or their directory"
        )
    if path.suffix == ".json":
        return _from_tokenizer_json(path, lowercase)
    return _from_vocab_txt(path, lowercase)


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the BERT special tokens: ``{"pad", "unk", "cls", "sep", "mask"} -> id``.

    Raises:
        ValueError: The tokenizer lacks one of them.
    """
    ids = {_SPECIAL_NAMES[t]: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t in SPECIAL_TOKENS if ids[_SPECIAL_NAMES[t]] is None]
    if missing:
        raise ValueError(f"tokenizer has no BERT special token(s) {', '.join(missing)}")
    return ids
