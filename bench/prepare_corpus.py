"""Streaming corpus preparation: a generated corpus of several GB tokenized into shards with bounded memory.

Prints tokens/s and the peak memory of the whole process tree (the main process and its tokenizing
workers, sampled every 0.5 s), checks the result against one-process tokenization on a slice, and compares
tokenization throughput on one file, in the same run: zoo's prepare (``num_proc`` workers) vs the
``tokenizers`` library's ``encode_batch`` in one process vs nanoGPT-style ``datasets.map(num_proc=N)``.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/prepare_corpus.py --size-gb 4 --num-proc 2

The corpus (copies of ../shared/data text, documents ended by ``<|endoftext|>``) is written under
``--dir`` (default: a new folder in /tmp) and deleted at the end. Needs ``datasets`` for the last row
(``pip install datasets``); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.data.cache import encode_to_file as _encode_to_file  # noqa: E402
from zoo.data.corpus import read_text  # noqa: E402
from zoo.data.shards import INDEX, open_shards, prepare_shards  # noqa: E402
from zoo.data.tokenizers import ENCODE_CHARS, EOT, text_chunks, train_bpe_tokenizer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SOURCES = ("wikitext-2/wiki.valid.tokens", "tinyshakespeare/input.txt")


class PeakMemory:
    """Samples the summed RSS and PSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.rss, self.pss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + info.rss, pss + info.pss
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._stop.wait(self.interval)


def make_documents(target_bytes: int, seed: int = 0) -> str:
    """Documents of 5-60 random lines of the shared text, each ended by ``<|endoftext|>``."""
    lines = [ln for src in SOURCES for ln in (SHARED / src).read_text(encoding="utf-8").splitlines() if ln]
    rng = random.Random(seed)
    docs, size = [], 0
    while size < target_bytes:
        doc = "\n".join(rng.choices(lines, k=rng.randint(5, 60))) + "\n" + EOT + "\n"
        docs.append(doc)
        size += len(doc.encode())
    return "".join(docs)


def write_corpus(folder: Path, size_gb: float, files: int) -> list[Path]:
    """``files`` files of ``size_gb / files`` GB each: a 16 MB block of documents written repeatedly,
    each copy under its own header line."""
    block = make_documents(16 << 20).encode()
    per_file = int(size_gb * 1e9 / files)
    paths = []
    for f in range(files):
        path = folder / f"part-{f:03d}.txt"
        with open(path, "wb") as out:
            written, copy = 0, 0
            while written < per_file:
                data = f"= copy {f}.{copy} =\n".encode() + block
                out.write(data)
                written, copy = written + len(data), copy + 1
        paths.append(path)
    return paths


def stream_tokens(out: Path) -> np.ndarray:
    tokens, _ = open_shards(str(out), cache_dir=out / "cache")
    return tokens


def check_slice(tok, corpus_file: Path, prepared: Path, work: Path, slice_mb: int) -> str:
    """The first ``slice_mb`` MB of a corpus file, tokenized by the one-process path (`_encode_to_file`),
    equals the start of the sharded result, up to the slice's last chunk (which the cut changes)."""
    with open(corpus_file, "rb") as f:
        data = f.read(slice_mb << 20)
    data = data[: data.rfind(b"\n") + 1]
    piece = work / "slice.txt"
    piece.write_bytes(data)
    one = work / "slice.uint16"
    _encode_to_file([piece], tok, np.uint16, one)
    reference = np.fromfile(one, dtype=np.uint16)
    last = list(text_chunks(read_text(piece), ENCODE_CHARS))[-1]
    n = len(reference) - 1 - len(tok.encode(last, add_special_tokens=False).ids)  # -1: the file's EOT
    same = bool((stream_tokens(prepared)[0:n] == reference[:n]).all())
    return f"{n:,} tokens of a {len(data) / 2**20:.0f} MB slice equal one-process tokenization: {same}"


def zoo_prepare(tok, files, out, num_proc, chunk_bytes, shard_tokens):
    t0 = time.perf_counter()
    prepare_shards(files, tok, out, dtype=np.uint16, shard_tokens=shard_tokens, num_proc=num_proc,
                   chunk_bytes=chunk_bytes)  # fmt: skip
    return len(stream_tokens(out)), time.perf_counter() - t0


def encode_batch_one_process(tok, file: Path) -> tuple[int, float]:
    """The `tokenizers` way: the whole file's chunks through ``encode_batch`` in one process."""
    t0 = time.perf_counter()
    chunks = list(text_chunks(read_text(file), ENCODE_CHARS))
    n = 0
    for i in range(0, len(chunks), 256):
        n += sum(len(e.ids) for e in tok.encode_batch(chunks[i : i + 256], add_special_tokens=False))
    return n, time.perf_counter() - t0


def datasets_map(tok, file: Path, num_proc: int, work: Path) -> tuple[int, float]:
    """nanoGPT's prepare.py: ``load_dataset`` + ``map(process, num_proc=N)`` + write one memmap."""
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()

    t0 = time.perf_counter()
    data = load_dataset("text", data_files=str(file), cache_dir=str(work / "hf"), split="train")
    eot = tok.token_to_id(EOT)

    def process(example):
        ids = tok.encode(example["text"], add_special_tokens=False).ids + [eot]
        return {"ids": ids, "len": len(ids)}

    tokenized = data.map(process, remove_columns=["text"], num_proc=num_proc)
    total = int(np.sum(tokenized["len"], dtype=np.uint64))
    arr = np.memmap(work / "hf.bin", dtype=np.uint16, mode="w+", shape=(total,))
    idx = 0
    for batch in range(64):
        shard = tokenized.shard(num_shards=64, index=batch, contiguous=True).with_format("numpy")
        ids = np.concatenate(shard["ids"])
        arr[idx : idx + len(ids)] = ids
        idx += len(ids)
    arr.flush()
    return total, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20)
    parser.add_argument("--shard-tokens", type=int, default=1 << 26)
    parser.add_argument("--compare-mb", type=int, default=30, help="size of the one-file comparison")
    parser.add_argument("--slice-mb", type=int, default=32)
    parser.add_argument("--dir", default=None, help="where to write the corpus (default: a new /tmp folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zoo-corpus-", dir=args.dir))
    free = shutil.disk_usage(work).free
    if free < 1.8 * args.size_gb * 1e9 + 2e9:
        sys.exit(f"{work}: {free / 1e9:.1f} GB free, need about {1.8 * args.size_gb + 2:.1f} GB")
    try:
        text = (SHARED / SOURCES[0]).read_text(encoding="utf-8")
        tok = train_bpe_tokenizer(text_chunks(text, ENCODE_CHARS), vocab_size=8192)
        t0 = time.perf_counter()
        (work / "corpus").mkdir()
        files = write_corpus(work / "corpus", args.size_gb, args.files)
        size = sum(f.stat().st_size for f in files)
        print(f"corpus: {len(files)} files, {size / 1e9:.2f} GB, written in {time.perf_counter() - t0:.0f} s")
        print(f"tokenizer: byte-level BPE, vocab 8192; num_proc={args.num_proc}, "
              f"chunk_bytes={args.chunk_bytes}")  # fmt: skip
        out = work / "shards"
        base = psutil.Process().memory_full_info()
        print(f"before prepare (zoo, torch and lightning imported): RSS {base.rss / 2**20:,.0f} MiB, "
              f"PSS {base.pss / 2**20:,.0f} MiB")  # fmt: skip
        with PeakMemory() as peak:
            n, dt = zoo_prepare(tok, files, out, args.num_proc, args.chunk_bytes, args.shard_tokens)
        shards = len(list(out.glob("shard-*")))
        print(f"prepare: {n:,} tokens in {shards} shards, {dt:.0f} s, {n / dt:,.0f} tokens/s, "
              f"{size / dt / 1e6:.2f} MB/s")  # fmt: skip
        print(f"peak memory of the process tree: RSS sum {peak.rss / 2**20:,.0f} MiB, "
              f"PSS sum {peak.pss / 2**20:,.0f} MiB (limit 1024 MiB)")  # fmt: skip
        assert (out / INDEX).is_file()
        print(check_slice(tok, files[0], out, work, args.slice_mb))
        shutil.rmtree(out)

        one = work / "one.txt"
        with open(files[1 % len(files)], "rb") as f:
            data = f.read(args.compare_mb << 20)
        one.write_bytes(data[: data.rfind(b"\n") + 1])
        for f in files:
            f.unlink()
        mb = one.stat().st_size / 1e6
        print(f"\none file of {mb:.0f} MB, same run:")
        zoo = zoo_prepare(tok, [one], work / "one-shards", args.num_proc, args.chunk_bytes, args.shard_tokens)
        rows = [
            (f"zoo prepare, num_proc={args.num_proc}", zoo),
            ("tokenizers encode_batch, one process", encode_batch_one_process(tok, one)),
        ]
        try:
            rows.append((f"nanoGPT-style datasets.map(num_proc={args.num_proc})",
                         datasets_map(tok, one, args.num_proc, work)))  # fmt: skip
        except ImportError:
            print("(datasets not installed: pip install datasets for the nanoGPT-style row)")
        base = rows[0][1][0] / rows[0][1][1]
        print("| way | tokens | seconds | tokens/s | zoo / this |\n| --- | ---: | ---: | ---: | ---: |")
        for name, (n, dt) in rows:
            print(f"| {name} | {n:,} | {dt:.1f} | {n / dt:,.0f} | {base / (n / dt):.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
