#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py): one table, zoo against transformers, every row side by side.
#
#   bash bench/gpu.sh --prepare   # where PyPI and ../shared/data are reachable: fills .cache/gpu-kit with
#                                 # the wheels a bare GPU machine lacks and the tinyshakespeare text
#   bash bench/gpu.sh             # on the GPU machine, from the repository root; < 8 min on one H100
#   bash bench/gpu.sh --tiny      # every row with tiny sizes on a CPU, about a minute
#
# Other arguments go to bench/gpu.py (--rows train,generate,recipe, --shakespeare FILE). The kit lives in
# .cache/ (git-ignored, never committed): on a machine that does not share this checkout, copy it along
# (with the device tool: carry [".cache/gpu-kit"]). PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
KIT=${ZOO_GPU_KIT:-.cache/gpu-kit}

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf "$KIT/wheels"
    mkdir -p "$KIT/wheels" "$KIT/data/tinyshakespeare"
    # pure-Python wheels of the versions installed here: jsonargparse[signatures] for `zoo fit`
    specs=$("$PYTHON" -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("jsonargparse", "docstring-parser", "typeshed-client")))')
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$KIT/wheels" $specs
    cp ../shared/data/tinyshakespeare/input.txt "$KIT/data/tinyshakespeare/input.txt"
    du -sh "$KIT"
    ls "$KIT/wheels"
    exit 0
fi

if ! "$PYTHON" -c "import jsonargparse, docstring_parser, typeshed_client" 2>/dev/null; then
    if ! ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
        echo "error: jsonargparse is not installed and $KIT/wheels holds no wheels; run" \
            "'bash bench/gpu.sh --prepare' where PyPI is reachable and bring $KIT along" >&2
        exit 1
    fi
    site=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$KIT"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu.py "$@"
