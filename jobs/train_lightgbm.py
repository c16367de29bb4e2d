"""Train the LightGBM teacher a job file names, on that job's training split, and save it where the job reads it.

    python jobs/train_lightgbm.py jobs/adult-lightgbm.yaml

reads the job's ``data`` (its URI, training split, ``limit``, feature columns and label) and writes the booster,
as ``Booster.save_model`` does, to the file of the job's ``teacher.name: lightgbm:<file>`` (a path or an
``s3://`` URI). The categorical feature columns are pandas categories, as ``lightgbm:`` teachers are fed. A file
already there is never replaced (a booster is named by its bytes: another one would relabel everything
downstream); remove it first to train anew. Needs ``pip install 'distkd[lightgbm]'``.
"""

from __future__ import annotations

import argparse
import sys
import time

import lightgbm
import pandas as pd

from distkd import config, storage
from distkd.config import ConfigError
from distkd.data.source import LABEL, Split
from distkd.models import sources

# A common recipe for adult-sized data: shallow-ish trees, a small learning rate, a fixed seed.
PARAMS = {"num_leaves": 31, "learning_rate": 0.05, "min_data_in_leaf": 20, "seed": 0, "verbose": -1}
ROUNDS = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="the job file whose lightgbm:<file> teacher to train")
    args = parser.parse_args(argv)
    try:
        job = config.load(args.job)
        kind, out = sources.split(job.teacher.name)
        if kind != "lightgbm":
            raise ConfigError(f"{args.job}: key 'teacher.name': '{job.teacher.name}', expected lightgbm:<file>")
        if storage.exists(out):
            raise ConfigError(f"{out}: a booster is there already; remove it to train a new one")
        data, features = job.data, job.data.features
        if features is None or features.categorical is None or features.numeric is None:
            raise ConfigError(f"{args.job}: key 'data.features': list the categorical and the numeric columns")
        train = Split.open(data.uri, data.train_split, data.limit, None, features.columns(), data.label)
    except ConfigError as e:
        print(f"train_lightgbm: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    table = train.read_table([*features.columns(), LABEL])
    frame = table.select(list(features.columns())).to_pandas()
    for column in features.categorical:
        frame[column] = pd.Categorical(frame[column].astype(object))
    classes = len(set(table[LABEL].to_pylist()))
    objective = {"objective": "binary"} if classes == 2 else {"objective": "multiclass", "num_class": classes}
    dataset = lightgbm.Dataset(frame, table[LABEL].to_numpy())
    booster = lightgbm.train({**PARAMS, **objective}, dataset, num_boost_round=ROUNDS)
    storage.publish(storage.absolute(out), booster.model_to_string().encode())
    print(f"trained on {len(frame)} rows of {train.uri} in {time.perf_counter() - started:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
