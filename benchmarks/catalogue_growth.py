"""Label store: a catalogue grown by 10%, labelled in the store that holds its earlier snapshot, against all again.

Packs ``--files`` files of ``--rows`` CIFAR-10 training rows each (the catalogue) and one more file
(the 10% it grows by) in a scratch folder, labels the catalogue with the quick start's teacher
(randomly initialised: its speed does not depend on its weights) on the quick start's actor pool,
then labels the grown catalogue twice: in the same store (its earlier shards reused) and in an
empty one (everything labelled again). For each: the stage's wall seconds, the teacher seconds
and rows its manifest records, and the bytes written to the store (new files, manifest included).

    python benchmarks/catalogue_growth.py --files 10 --rows 1000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pyarrow.parquet as pq
import torch
from common import header, quickstart_job, scratch_folder, start_ray, table, timed

from distkd import labelstore
from distkd.softlabels.stage import generate

CIFAR10 = Path("../shared/datasets/cifar10")


def pack(files: int, rows: int) -> Path:
    """``files + 1`` training files of ``rows`` rows (the last one is the growth) and a small test split."""
    folder = Path(scratch_folder("catalogue"))
    source = pq.read_table(CIFAR10 / "train-00000-of-00005.parquet").slice(0, (files + 1) * rows)
    for i in range(files + 1):
        pq.write_table(source.slice(i * rows, rows), folder / f"all-{i:05d}.parquet")
    pq.write_table(pq.read_table(CIFAR10 / "test-00000-of-00001.parquet").slice(0, 100), folder / "test-0.parquet")
    return folder


def snapshot(packed: Path, files: int) -> str:
    """A data folder holding the first ``files`` training files (hard links) and the test split."""
    folder = Path(scratch_folder("snapshot"))
    for i in range(files):
        os.link(packed / f"all-{i:05d}.parquet", folder / f"train-{i:05d}.parquet")
    os.link(packed / "test-0.parquet", folder / "test-0.parquet")
    return str(folder)


def files_under(folder: str) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()}


def label(data: str, store: str, weights: str) -> list[object]:
    """Label ``data`` into ``store``: wall s, teacher s, teacher rows, rows, bytes written to the store."""
    spec = quickstart_job({"store": store, "data": {"uri": data, "val_limit": 100}}).softlabel_spec(weights)
    before = files_under(store)
    with timed() as t:
        entry = generate(spec)
    written = sum(size for path, size in files_under(store).items() if path not in before)
    m = labelstore.manifest(entry)
    return [round(t["seconds"], 1), m.teacher_seconds, m.teacher_rows, m.rows, written]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=10, help="files of the catalogue before it grows by one")
    p.add_argument("--rows", type=int, default=1000, help="rows per file")
    args = p.parse_args()
    header("Label store: a catalogue grown by 10%")
    start_ray()
    packed = pack(args.files, args.rows)
    store, fresh = scratch_folder("store"), scratch_folder("store")
    torch.manual_seed(0)
    weights = Path(store).parent / f"{Path(store).name}-teacher.pt"
    torch.save(quickstart_job({"store": store}).teacher.build().state_dict(), weights)
    first = label(snapshot(packed, args.files), store, str(weights))
    grown = snapshot(packed, args.files + 1)
    reused, again = label(grown, store, str(weights)), label(grown, fresh, str(weights))
    headers = ["labelling", "stage s", "teacher s", "teacher rows", "rows", "bytes written"]
    print(
        table(
            headers,
            [
                [f"the catalogue ({args.files} files), empty store", *first],
                ["grown by 10%, in the store of the catalogue", *reused],
                ["grown by 10%, all again (empty store)", *again],
            ],
        )
    )
    print(
        f"\nteacher seconds: {reused[1] / again[1]:.3f} of labelling it all again; "
        f"bytes written: {reused[4] / again[4]:.3f}\n",
        flush=True,
    )


if __name__ == "__main__":
    main()
