"""``python -m zoo.data.prepare_corpus``: tokenize a corpus into a sharded folder (`zoo.data.shards`) to
upload to an object store or read in place."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from zoo.data.corpus import resolve_files
from zoo.data.shards import INDEX, prepare_shards
from zoo.data.tokenizers import load_tokenizer


def main(argv: list[str] | None = None) -> None:
    """``python -m zoo.data.prepare_corpus --files SPEC... --tokenizer PATH --out DIR``: prepare a sharded
    corpus into ``DIR`` (to upload to an object store, or to read in place)."""
    parser = argparse.ArgumentParser(prog="python -m zoo.data.prepare_corpus", description=main.__doc__)
    parser.add_argument("--files", nargs="+", required=True, help="corpus specs, as TextDataModule's files")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json, or a directory with it")
    parser.add_argument("--out", required=True, help="the folder to write (index.json last)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 24)
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    tok = load_tokenizer(args.tokenizer)
    files = resolve_files(args.files, cache_dir=Path(args.out) / ".downloads")
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    tally = prepare_shards(files, tok, Path(args.out), dtype=dtype, shard_tokens=args.shard_tokens,
                           num_proc=args.num_proc, chunk_bytes=args.chunk_bytes)  # fmt: skip
    index = json.loads((Path(args.out) / INDEX).read_text())
    shards = len(index["shards"])
    print(f"{args.out}: {index['tokens']:,} tokens of {len(files)} file(s) in {shards} shard(s)")
    if tally.count:
        print(tally.message(", ".join(args.files)))


if __name__ == "__main__":
    main()
