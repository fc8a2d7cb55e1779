"""Where `zoo`'s start-up time goes: `zoo --help` and `zoo fit --help` against `python -c "import lightning"`,
timed side by side in one run (best of N), plus zoo's own share of `import zoo.cli` from `-X importtime`.

    python bench/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def best_of(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def own_import_share() -> tuple[float, float]:
    """(seconds in zoo's own modules, seconds for all of `import zoo.cli`), from -X importtime."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import zoo.cli"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    own = total = 0.0
    for line in out.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if not match:
            continue
        self_us, cumulative_us, _, name = match.groups()
        if name.startswith("zoo"):
            own += int(self_us) / 1e6
        if name == "zoo.cli":
            total = int(cumulative_us) / 1e6
    return own, total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    zoo = shutil.which("zoo") or str(Path(sys.executable).parent / "zoo")
    rows = [
        ('python -c "import lightning"', [sys.executable, "-c", "import lightning"]),
        ("zoo --help", [zoo, "--help"]),
        ("zoo fit --help", [zoo, "fit", "--help"]),
    ]
    results = {name: best_of(cmd, args.repeat) for name, cmd in rows}
    base = results['python -c "import lightning"']
    print(f"{'command':32} {'best of ' + str(args.repeat):>10} {'vs import lightning':>20}")
    for name, seconds in results.items():
        print(f"{name:32} {seconds:9.2f}s {seconds / base:19.2f}x")
    own, total = own_import_share()
    print(f"import zoo.cli: {total:.2f}s, of which zoo's own modules {own:.3f}s")


if __name__ == "__main__":
    main()
