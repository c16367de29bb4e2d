"""Run the benchmarks of items 1-4 (throughput, cost per student run, fixed cost, storage) one after another,
each in its own process, and print (or write, with ``--out``) their tables in one Markdown file.

    python benchmarks/run_all.py --quick                      # a reduced run: under 10 minutes on 2 idle cores
    python benchmarks/run_all.py --out benchmarks/run.md       # the sizes RESULTS.md quotes

Item 5 (quality, ``quality.py``) takes hours at full size and is run on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
FULL = {
    "teacher_throughput.py": "--teachers resnet9-w16:50000,resnet18:10000".split(),
    "student_cost.py": "--rows 10000 --epochs 3".split(),
    "fixed_cost.py": [],
    "label_bytes.py": "--rows 10000 --views 8".split(),
}
QUICK = {  # one teacher where the full run has two, the dense format only for the cost per student run
    "teacher_throughput.py": "--teachers resnet9-w16:4000 --shard-rows 250".split(),
    "student_cost.py": "--rows 2000 --epochs 2 --val-rows 500 --teachers resnet9-w16 --formats dense".split(),
    "fixed_cost.py": [],
    "label_bytes.py": "--rows 1000 --views 4".split(),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes")
    p.add_argument("--only", help="comma-separated script names to run (default: all four)")
    p.add_argument("--out", help="also write the tables to this Markdown file")
    args = p.parse_args()
    scripts = QUICK if args.quick else FULL
    chosen = args.only.split(",") if args.only else list(scripts)
    started, output = time.perf_counter(), []
    for script in chosen:
        command = [sys.executable, str(HERE / script), *scripts[script]]
        print(f"[run_all] {' '.join(command[1:])}", file=sys.stderr, flush=True)
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        print(result.stdout, flush=True)
        output.append(result.stdout)
        if result.returncode:
            raise SystemExit(f"[run_all] {script} failed with exit code {result.returncode}")
    total = f"\n{'quick' if args.quick else 'full'} run of {', '.join(chosen)}: {time.perf_counter() - started:.0f} s\n"
    print(total)
    if args.out:
        Path(args.out).write_text("".join(output) + total)


if __name__ == "__main__":
    main()
