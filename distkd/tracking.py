"""A training run's metrics on their way out: one console line per epoch on the driver, and the curves
for TensorBoard (always) and MLflow (when the job asks for it).

``RunMetrics`` runs on the rank-0 worker. Event files are written to a local folder and copied after every
epoch to ``<run>/tensorboard/``, so any store (local or ``s3://``) holds them and
``tensorboard --logdir <store>/runs`` shows every run side by side.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from ray.train import UserCallback
from ray.util.queue import Empty, Queue

from distkd import storage
from distkd.console import epoch_line, say

TENSORBOARD = "tensorboard"
SCALARS = ("loss", "kd", "ce", "val_accuracy", "samples_per_s", "seconds")


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
        self._upload()
        if self.mlflow is not None:
            self.mlflow.log_metrics({n: metrics[n] for n in SCALARS}, step=step)

    def _upload(self) -> None:
        """The event files, as written so far, into the run folder (any store URI)."""
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                storage.write_bytes(storage.join(self.run_uri, TENSORBOARD, name), f.read())

    def close(self) -> None:
        self.writer.close()  # its writer thread has written every event now: upload the files complete
        self._upload()
        shutil.rmtree(self.local, ignore_errors=True)
        if self.mlflow is not None:
            self.mlflow.end_run()


class EpochPrinter:
    """Prints one line per epoch on the driver, from the metrics rank 0 reports.

    ``callback`` goes into Ray Train's ``RunConfig(callbacks=...)``: it runs on the train
    controller and forwards the metrics through a Ray queue that a thread here prints from.
    """

    def __init__(self, label: str, epochs: int) -> None:
        self.label, self.epochs = label, epochs
        self.latest: dict | None = None  # the last epoch's metrics, once printed
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.callback = ForwardMetrics(self.queue)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._print_until_done, daemon=True)

    def _print_until_done(self) -> None:
        while True:
            try:
                metrics = self.queue.get(timeout=0.5)
            except Empty:
                if self._done.is_set():
                    return
                continue
            self.latest = metrics
            say(epoch_line(self.label, self.epochs, metrics))

    def __enter__(self) -> EpochPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.queue.shutdown()


class ForwardMetrics(UserCallback):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put(metrics[0])  # rank 0's: its all-reduced figures are the run's
