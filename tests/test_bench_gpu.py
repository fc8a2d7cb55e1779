"""bench/gpu.sh --tiny: the GPU benchmark's every row runs on a CPU with tiny sizes and prints one table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_tiny_prints_every_row_and_its_checks_pass(stdlib_text_file, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--tiny", "--shakespeare", str(stdlib_text_file),
         "--log-dir", str(tmp_path / "logs")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "logs" / "table.md").read_text()
    assert table in proc.stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table.splitlines()[2:]}
    names = list(rows)
    assert [re.sub(r",.*", "", n) for n in names] == [
        "train GPT-2 tiny",
        "train GPT-2 tiny",
        "train BERT tiny MLM+NSP",
        "greedy decoding GPT-2 tiny",
        "greedy decoding GPT-2 tiny",
        "recipe shakespeare-char",
        "train GPT-2 tiny on packed documents",
    ], names
    assert names[0].endswith("eager") and "torch.compile" in names[1]
    measured = r"[\d,.]+ ms/step, [\d,]+ tok/s, MFU \d+\.\d%"
    for name in names[:3]:
        zoo, theirs, ratio, _ = rows[name]
        assert re.fullmatch(measured, zoo) and re.fullmatch(measured, theirs), (name, zoo, theirs)
        assert re.fullmatch(r"\d+\.\d\dx", ratio), ratio
    for name in names[3:5]:
        assert rows[name][3].strip(" |") == "same tokens: yes", rows[name]
    assert re.fullmatch(r"val loss \d+\.\d{3} in \d+ s", rows[names[5]][0]), rows[names[5]]
    zoo, theirs, ratio, check = rows[names[6]]
    assert re.fullmatch(measured, zoo) and re.fullmatch(measured, theirs), (zoo, theirs)
    loss = re.search(r"flex used: no \(not CUDA\); loss (\S+) vs (\S+), gradient cosine (\S+)", check)
    assert loss and loss[1] == loss[2] and float(loss[3]) > 0.999, check
    assert "recipe.log" in os.listdir(tmp_path / "logs")
