"""``python -m zoo.data.prepare_corpus``: tokenize a corpus into a sharded folder (`zoo.data.shards`) to
upload to an object store or read in place."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from zoo.data.corpus import resolve_files
from zoo.data.shards import INDEX, prepare_shards
from zoo.data.tokenizers import load_tokenizer


def main(argv: list[str] | None = None) -> None:
    """``python -m zoo.data.prepare_corpus --files SPEC... --tokenizer PATH --out DIR``: prepare a sharded
    corpus into ``DIR`` (to upload to an object store, or to read in place).

    A bad input (a spec that matches no file, an empty corpus, a wrong tokenizer path, a file that is not
    UTF-8 text) ends the command with one ``error: ...`` line and exit code 1; ``ZOO_DEBUG=1`` shows the
    traceback instead.
    """
    args = _parser().parse_args(argv)
    try:
        _prepare(args)
    except (ValueError, OSError) as err:  # a reading error is an OSError (ConnectionError included)
        if os.environ.get("ZOO_DEBUG", "") not in ("", "0"):
            raise
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zoo.data.prepare_corpus", description=(main.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--files",
        nargs="+",
        required=True,
        help="corpus specs, as TextDataModule's files: a file, a glob (quote it: 'data/*.txt'), a folder "
        "(its *.txt files, not those of subfolders), stdlib:GLOB, an http(s) URL",
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json, or a directory with it")
    parser.add_argument("--out", required=True, help="the folder to write (index.json last)")
    parser.add_argument(
        "--shard-tokens", type=_positive, default=1 << 24, help="at most this many tokens per shard (2^24)"
    )
    parser.add_argument("--num-proc", type=_positive, default=1, help="tokenizing worker processes (1)")
    parser.add_argument(
        "--chunk-bytes", type=_positive, default=1 << 20, help="text per unit of work (1 MiB); bounds memory"
    )
    return parser


def _positive(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _prepare(args: argparse.Namespace) -> None:
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give the folder to write")
    tok = load_tokenizer(args.tokenizer)
    files = resolve_files(args.files, cache_dir=out / ".downloads")
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    tally = prepare_shards(files, tok, out, dtype=dtype, shard_tokens=args.shard_tokens,
                           num_proc=args.num_proc, chunk_bytes=args.chunk_bytes)  # fmt: skip
    index = json.loads((out / INDEX).read_text())
    shards = len(index["shards"])
    print(f"{args.out}: {index['tokens']:,} tokens of {len(files)} file(s) in {shards} shard(s)")
    if tally.count:
        print(tally.message(", ".join(args.files)))


if __name__ == "__main__":
    main()
