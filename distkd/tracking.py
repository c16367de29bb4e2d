"""Each training run's curves for TensorBoard (always) and MLflow (when the job asks for it).

Runs on the rank-0 worker. Event files are written to a local folder and copied after every
epoch to ``<run>/tensorboard/``, so any store (local or ``s3://``) holds them and
``tensorboard --logdir <store>/runs`` shows every run side by side.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

from distkd import storage

TENSORBOARD = "tensorboard"
SCALARS = ("loss", "kd", "ce", "val_accuracy", "samples_per_s", "seconds")


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


class RunMetrics:
    """Per-epoch scalars of one run, to TensorBoard and optionally MLflow."""

    def __init__(self, run_uri: str, label: str, params: dict, mlflow_uri: str | None = None) -> None:
        from tensorboardX import SummaryWriter

        self.run_uri = run_uri
        self.local = tempfile.mkdtemp(prefix="distkd-tb-")
        self.writer = SummaryWriter(logdir=self.local, flush_secs=3600)
        self.mlflow = None
        if mlflow_uri is not None:
            import mlflow

            mlflow.set_tracking_uri(mlflow_uri)
            mlflow.set_experiment(label.split("-")[0])
            mlflow.start_run(run_name=run_uri.rstrip("/").rsplit("/", 1)[-1])
            mlflow.log_params(params)
            self.mlflow = mlflow

    def log(self, metrics: dict) -> None:
        step = metrics["epoch"]
        for name in SCALARS:
            self.writer.add_scalar(name, metrics[name], step)
        self.writer.flush()
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                storage.write_bytes(storage.join(self.run_uri, TENSORBOARD, name), f.read())
        if self.mlflow is not None:
            self.mlflow.log_metrics({n: metrics[n] for n in SCALARS}, step=step)

    def close(self) -> None:
        self.writer.close()
        shutil.rmtree(self.local, ignore_errors=True)
        if self.mlflow is not None:
            self.mlflow.end_run()
