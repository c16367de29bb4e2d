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
import uuid
from collections.abc import Callable
from typing import ClassVar

import ray
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

    ``callback`` goes into Ray Train's ``RunConfig(callbacks=...)``: it runs on the train controller and forwards
    the metrics, with this run's key, through the process's one Ray queue (``EpochQueue``), whose thread prints each
    line for the run it belongs to.
    """

    def __init__(self, label: str, epochs: int) -> None:
        self.label, self.epochs = label, epochs
        self.latest: dict | None = None  # the last epoch's metrics, once printed
        self.key = uuid.uuid4().hex
        self.lines = EpochQueue.current()
        self.callback = ForwardMetrics(self.lines.queue, self.key)

    def show(self, metrics: dict) -> None:
        self.latest = metrics
        say(epoch_line(self.label, self.epochs, metrics))

    def __enter__(self) -> EpochPrinter:
        self.lines.add(self.key, self.show)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lines.remove(self.key)  # the run's reports were all queued before its fit returned: each is printed


class EpochQueue:
    """One Ray queue for the epoch metrics of every run this process trains, however many at once (a queue of their
    own was an actor, a process of 2 s of CPU, each run), and, while a run trains, the thread that hands each to its
    run's printer."""

    _current: ClassVar[EpochQueue | None] = None
    _made = threading.Lock()

    @classmethod
    def current(cls) -> EpochQueue:
        """This Ray connection's queue: a new connection, a new queue (the last one went with its connection)."""
        context = ray.get_runtime_context()
        connection = (context.get_node_id(), context.get_job_id())  # a cluster started again has new nodes
        with cls._made:
            if cls._current is None or cls._current.connection != connection:
                cls._current = cls(connection)
            return cls._current

    def __init__(self, connection: tuple[str, str]) -> None:
        self.connection = connection
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._printers: dict[str, Callable[[dict], None]] = {}
        self._members = threading.Lock()  # runs come and go from their own threads
        self._reading = threading.Lock()  # an item is taken and printed under it: a drain misses none
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, key: str, printer: Callable[[dict], None]) -> None:
        with self._members:
            self._printers[key] = printer
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._print_until_stopped, daemon=True)
                self._thread.start()

    def remove(self, key: str) -> None:
        """Print what is queued, then forget ``key``'s printer; the thread stops with the last run."""
        with self._members:
            self.drain()
            del self._printers[key]
            if self._printers or self._thread is None:
                return
            self._stop.set()
            self._thread.join()
            self._thread = None

    def drain(self) -> None:
        with self._reading:
            for item in self.queue.get_nowait_batch(self.queue.qsize()):
                self._print(*item)

    def _print_until_stopped(self) -> None:
        while not self._stop.is_set():
            with self._reading:
                try:
                    item = self.queue.get(timeout=0.5)
                except Empty:
                    continue
                self._print(*item)

    def _print(self, key: str, metrics: dict) -> None:
        if (printer := self._printers.get(key)) is not None:  # a run's items all come before its printer leaves
            printer(metrics)


class ForwardMetrics(UserCallback):
    def __init__(self, queue: Queue, key: str) -> None:
        self.queue, self.key = queue, key

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put((self.key, metrics[0]))  # rank 0's: its all-reduced figures are the run's
