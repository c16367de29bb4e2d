"""Language-model labels (issue 31): label generation tokens/s against a bare loop, and bytes per token against
the distilled student's test perplexity for top-k labels (k, float16 or 8 bits) beside dense labels.

Everything is ``jobs/reviews-lm.yaml``'s: its data (``--rows`` training reviews, the test split), tokenizer, teacher
(trained once into ``--store`` by distkd's per-batch code, so a rerun reuses it), student and distillation settings.

1. Throughput: the soft-label stage (``generate``: Ray Data's actor pool, the teacher actor reading and tokenising
   each unit, forward, top-k and tail, encoding, writing the Parquet shard, the commit) into a fresh store, against
   a bare loop of the same teacher over the same token blocks, already tokenised, in one process (forward, log-softmax
   and top-k: no Ray, no tail, no writing), each on the same CPUs. The stage is run once more on one row: its
   seconds are the stage's fixed cost (pool start-up, model loading, commit), and the rate with them taken off is what
   it does per token. Tokens are a block's positions, padding included, as the stage counts them.
2. Quality: each label format is written by the stage into ``--store`` (the manifest records its bytes per token);
   the student is distilled from it by distkd's per-batch code (``common.plain_training``: the task's loss, the
   optimiser, the schedule) in one process, the same initialisation and batches for every format of a seed, and
   its perplexity is measured on the test split. Dense labels are the teacher's full distribution, run online on
   each batch (float32; storing them takes V values a token: their bytes are measured on ``--dense-rows`` rows).

    python benchmarks/lm_labels.py                       # reviews-lm.yaml's sizes: about 25 min on 2 idle cores
    python benchmarks/lm_labels.py --rows 600 --test-rows 300 --ks 8 --seeds 0 --repeat-seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics

import torch
from common import (
    CPU,
    cached_columns,
    header,
    job_file,
    loaded,
    plain_training,
    scratch_folder,
    start_ray,
    table,
    timed,
)

from distkd import labelstore
from distkd.cluster import connect
from distkd.data import inputs
from distkd.data.blocks import IGNORE
from distkd.data.kinds import InputKind
from distkd.data.source import Split
from distkd.evaluate.metrics import sum_stats
from distkd.evaluate.token_metrics import token_metrics, token_stats
from distkd.job import Job
from distkd.softlabels.stage import generate
from distkd.specs import SoftLabelSpec, TrainingRun

JOB = "jobs/reviews-lm.yaml"
DISTILLKIT = 114  # bytes a token of DistillKit's top-50 labels (issue 31), the goal's bound
DENSE = "dense (teacher online, full distribution)"
SCRATCH = "no labels (student from scratch)"
VALUE_TYPES = ("float16", "uint8")


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A split's rows as the blocks kind prepares them: ids, token blocks [N, L] and next tokens [N, L]."""

    ids: list[str]
    tokens: torch.Tensor
    following: torch.Tensor

    @classmethod
    def of(cls, inputs: InputKind, split: Split) -> Blocks:
        table = split.read_table(["id", *split.input.columns, "label"])
        prepared = inputs.prepare({name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names})
        return cls(table["id"].to_pylist(), torch.from_numpy(prepared["tokens"]), torch.from_numpy(prepared["next"]))

    def first(self, rows: int | None) -> Blocks:
        return Blocks(self.ids[:rows], self.tokens[:rows], self.following[:rows])

    @property
    def positions(self) -> int:
        return self.tokens.numel()


def bare_loop(spec: SoftLabelSpec, blocks: Blocks, threads: int) -> float:
    """Tokens/s of the teacher alone over the blocks in the stage's batches: forward, log-softmax, top-k."""
    torch.set_num_threads(threads)
    model, size, k = loaded(spec.teacher.model, spec.teacher.uri), spec.execution.batch_size, spec.format.top_k
    with torch.inference_mode(), timed() as t:
        for i in range(0, len(blocks.ids), size):
            logits = model(spec.inputs.model_input({"tokens": blocks.tokens[i : i + size]}, CPU))
            torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return blocks.positions / t["seconds"]


def stage_seconds(spec: SoftLabelSpec, cpus: float, rows: int | None = None) -> float:
    """Seconds of the soft-label stage (1 actor of ``cpus`` CPUs) into a fresh store, on the first ``rows`` rows."""
    execution = spec.execution.model_copy(update={"actors": 1, "cpus_per_actor": cpus})
    data = spec.data if rows is None else dataclasses.replace(spec.data, limit=rows)
    fresh = dataclasses.replace(spec, store=scratch_folder("lm-throughput"), execution=execution, data=data)
    with timed() as t:
        generate(fresh)
    return t["seconds"]


def throughput(spec: SoftLabelSpec, blocks: Blocks, cpus: list[int]) -> str:
    rows = []
    for n in cpus:
        bare = bare_loop(spec, blocks, n)
        seconds, fixed = stage_seconds(spec, n), stage_seconds(spec, n, rows=1)
        rate, marginal = blocks.positions / seconds, blocks.positions / max(seconds - fixed, 1e-9)
        rows.append([f"bare loop, 1 process, {n} torch thread(s)", bare, 1.0, "-", "-"])
        rows.append([f"soft-label stage, 1 actor x {n} CPU", rate, rate / bare, fixed, marginal / bare])
    return table(["", "tokens/s", "vs bare loop", "fixed s (1 row)", "vs bare loop, fixed s taken off"], rows)


@torch.inference_mode()
def test_metrics(model: torch.nn.Module, job: Job, test: Blocks, batch: int = 256) -> dict:
    """Perplexity and next-token accuracy on the test blocks (distkd's evaluation statistics, summed exactly)."""
    torch.set_num_threads(os.cpu_count())
    model.eval()
    stats = (
        token_stats(
            model(job.inputs.model_input({"tokens": test.tokens[i : i + batch]}, CPU)).float().numpy(),
            test.following[i : i + batch].numpy(),
        )
        for i in range(0, len(test.ids), batch)
    )
    return token_metrics(sum_stats(stats))


def seeded(run: TrainingRun, seed: int) -> TrainingRun:
    return dataclasses.replace(run, train=run.train.model_copy(update={"seed": seed}))


def label_specs(args: argparse.Namespace, teacher: str) -> dict[str, SoftLabelSpec]:
    """Each top-k format's soft-label spec, by name."""
    specs = {}
    for k in (int(k) for k in args.ks.split(",")):
        for dtype in VALUE_TYPES:
            settings = {"format": "topk", "top_k": k, "dtype": dtype}
            specs[f"top-{k} {dtype}"] = job_file(JOB, changes(args, {"softlabels": settings})).softlabel_spec(teacher)
    return specs


def changes(args: argparse.Namespace, more: dict) -> dict:
    """The benchmark's changes to the job file: the store, the rows, the epochs, and ``more``."""
    student = {"train": {"epochs": args.epochs}} if args.epochs else {}
    return {"store": args.store, "data": {"limit": args.rows}, "student": student, **more}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6000, help="training reviews (reviews-lm.yaml's limit)")
    p.add_argument("--test-rows", type=int, help="first N test reviews (default: all)")
    p.add_argument("--epochs", type=int, help="student epochs (default: the job's)")
    p.add_argument("--ks", default="8,32,128", help="top-k values")
    p.add_argument("--seeds", default="0", help="student seeds of every format")
    p.add_argument("--repeat-seeds", default="1,2", help="more seeds of top-32 uint8 (the job's) and dense")
    p.add_argument("--cpus", default="1,2", help="CPUs of the throughput runs (the actor's, the bare loop's threads)")
    p.add_argument("--throughput-rows", type=int, help="training reviews the throughput runs label (default: all)")
    p.add_argument("--dense-rows", type=int, default=250, help="rows whose dense labels are stored to count bytes")
    p.add_argument("--store", default="/tmp/distkd-bench/lm-labels", help="kept between runs: reruns reuse it")
    p.add_argument("--parts", default="throughput,quality", help="the parts to run: throughput, quality or both")
    args = p.parse_args()
    header("Language-model labels: throughput and bytes per token")
    job = job_file(JOB, changes(args, {}))
    connect(None)  # a local Ray of this process's own
    start_ray()
    inputs.make_ready(job.inputs)  # the tokenizer, trained once into the store
    teacher = trained_teacher(job, args.store)
    parts = args.parts.split(",")
    if "throughput" in parts:
        labelling(args, job, teacher)
    if "quality" in parts:
        students(args, job, teacher)


def trained_teacher(job: Job, store: str) -> str:
    """The job's teacher trained by distkd's per-batch code in this process (``plain_training``: stage 0's loss,
    optimiser and schedule, without Ray Train's workers, which a loaded machine's memory has killed), kept in the
    store under its run's name, so a rerun reuses it; returns its weights file."""
    run = job.teacher_run()
    weights = os.path.join(store, f"{run.uri.rsplit('/', 1)[-1]}-plain.pt")
    if not os.path.exists(weights):
        train = Blocks.of(job.inputs, job.train)
        model = plain_training(run, {"tokens": train.tokens}, train.following).model
        torch.save(model.state_dict(), weights + ".partial")
        os.replace(weights + ".partial", weights)
    return weights


def labelling(args: argparse.Namespace, job: Job, teacher: str) -> None:
    """Part 1: the soft-label stage's tokens/s against the bare loop's."""
    default = job.softlabel_spec(teacher)  # the job's own format: top-32 uint8
    timed_spec = dataclasses.replace(default, data=dataclasses.replace(job.train, limit=args.throughput_rows))
    labelled = Blocks.of(job.inputs, timed_spec.data)
    print(f"### Throughput: {job.teacher.name} {job.teacher.kwargs}, {len(labelled.ids):,} blocks x "
          f"{labelled.tokens.shape[1]} tokens, top-{default.format.top_k} {default.format.dtype}, "
          f"batch {default.execution.batch_size}\n")  # fmt: skip
    print(throughput(timed_spec, labelled, [int(c) for c in args.cpus.split(",")]), "\n", flush=True)


def students(args: argparse.Namespace, job: Job, teacher: str) -> None:
    """Part 2: each format's bytes per token and the test perplexity of the student distilled from it."""
    default = job.softlabel_spec(teacher)
    train, test = Blocks.of(job.inputs, job.train), Blocks.of(job.inputs, job.evaluated).first(args.test_rows)
    specs = label_specs(args, teacher)
    entries = {name: generate(spec) for name, spec in specs.items()}
    dense = job_file(JOB, changes(args, {"softlabels": {"format": "dense", "top_k": None, "dtype": "float16"}}))
    dense_spec = dense.softlabel_spec(teacher)
    entries[DENSE] = generate(
        dataclasses.replace(dense_spec, data=dataclasses.replace(job.train, limit=args.dense_rows))
    )
    stored = {name: stored_bytes(entry, train) for name, entry in entries.items()}
    teacher_model = loaded(job.teacher, teacher)
    kd_run, scratch_run = job.distilled_run(default), job.scratch_run()

    def student(name: str, seed: int) -> dict:
        """The student distilled from ``name``'s labels (or trained without), its test metrics."""
        inputs, following = {"tokens": train.tokens}, train.following
        with timed() as t:
            if name == SCRATCH:
                trained = plain_training(seeded(scratch_run, seed), inputs, following)
            elif name == DENSE:
                trained = plain_training(seeded(kd_run, seed), inputs, following, teacher=teacher_model)
            else:
                columns = cached_columns(entries[name], train.ids)
                trained = plain_training(seeded(kd_run, seed), inputs, following, columns)
        metrics = test_metrics(trained.model, job, test)
        print(f"[lm_labels] {name}, seed {seed}: perplexity {metrics['perplexity']:.3f} ({t['seconds']:.0f} s)")
        return metrics

    seeds, repeats = [int(s) for s in args.seeds.split(",")], [int(s) for s in args.repeat_seeds.split(",") if s]
    default_name = f"top-{default.format.top_k} {default.format.dtype}"
    results: dict[str, dict[int, dict]] = {}
    names = [DENSE, *specs, SCRATCH]  # the job's format first: the comparison that matters most
    first = sorted(names, key=lambda n: n not in (DENSE, default_name))
    cells = [(name, seed) for seed in seeds for name in first]
    cells += [(name, seed) for seed in repeats for name in (DENSE, default_name) if name in [DENSE, *specs]]  # last
    for name, seed in cells:
        results.setdefault(name, {})[seed] = student(name, seed)
    teacher_ppl = test_metrics(teacher_model, job, test)["perplexity"]
    results = {name: results[name] for name in names}
    print(quality(results, stored, seeds[0], teacher_ppl, job, test), "\n", flush=True)
    if repeats and default_name in results:
        print(spread(results, default_name), flush=True)


def stored_bytes(entry: str, train: Blocks) -> tuple[float, float]:
    """Bytes of a committed entry per token as its manifest records them (a block's every position, padding
    included) and per real token (a position with a next token) of the training rows it holds."""
    manifest = labelstore.manifest(entry)
    real = int((train.following[: manifest.rows] != IGNORE).sum())
    return manifest.bytes_per_unit, manifest.bytes / real


def quality(
    results: dict[str, dict[int, dict]],
    stored: dict[str, tuple[float, float]],
    seed: int,
    teacher_ppl: float,
    job: Job,
    test: Blocks,
) -> str:
    dense = results[DENSE][seed]["perplexity"]
    rows = [
        [
            name,
            *((f"{b:,.1f}" for b in stored[name]) if name in stored else ("-", "-")),
            f"{stored[name][1] / DISTILLKIT:.2f}" if name in stored else "-",
            results[name][seed]["perplexity"],
            f"{results[name][seed]['perplexity'] / dense:.4f}",
            f"{results[name][seed]['accuracy']:.2%}",
        ]
        for name in results
    ]
    title = (
        f"### Bytes per token and the student's test perplexity, seed {seed}: student {job.student.name} "
        f"{job.student.kwargs}, {len(test.ids):,} test reviews ({int((test.following != IGNORE).sum()):,} tokens); "
        f"the teacher's perplexity {teacher_ppl:.2f}\n\n"
    )
    headers = ["labels", "bytes/token (manifest)", "bytes/real token", f"real vs DistillKit's {DISTILLKIT}",
               "test perplexity", "vs dense", "next-token accuracy"]  # fmt: skip
    return title + table(headers, rows)


def spread(results: dict[str, dict[int, dict]], name: str) -> str:
    """Per seed: the perplexity with ``name``'s labels and with dense ones, and their ratio; mean and spread."""
    seeds = sorted(set(results[name]) & set(results[DENSE]))
    ratios = [results[name][s]["perplexity"] / results[DENSE][s]["perplexity"] for s in seeds]
    rows = [
        [s, results[name][s]["perplexity"], results[DENSE][s]["perplexity"], f"{r:.4f}"] for s, r in zip(seeds, ratios)
    ]
    mean = statistics.mean(ratios)
    lines = [
        f"### {name} against dense labels over {len(seeds)} seeds\n",
        table(["seed", name, "dense", "ratio"], rows),
    ]
    lines.append(f"\nratio: mean {mean:.4f}, min {min(ratios):.4f}, max {max(ratios):.4f}\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
