"""What ``distkd`` prints: a line when a stage starts and ends, progress bars, one line per epoch, a summary.

Everything is printed by the driver, once. Ray's own logs and warnings (its loggers, Python
warnings, and what workers print) go to ``distkd.log`` in the Ray session's log folder instead
of the terminal, unless ``--verbose``. When stdout is not a terminal, progress bars become
plain lines every ``PLAIN_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tqdm import tqdm

LOG_FILE = "distkd.log"
PLAIN_INTERVAL = 10.0  # seconds between progress lines when stdout is not a terminal
T = TypeVar("T")


def duration(seconds: float) -> str:
    """4.2s, 3m05s, 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


# -- stages -------------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Each stage of this run, in order: seconds it took, or None where its output was reused."""

    stages: dict[str, float | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.stages.clear()


timeline = Timeline()


def reusing(label: str, what: str, uri: str) -> None:
    print(f"[{label}] reusing {what} {uri}", flush=True)
    timeline.stages[label] = None


@contextmanager
def computing(label: str, what: str, uri: str) -> Iterator[None]:
    """One line as the stage starts (``what`` it computes, into ``uri``), one as it ends."""
    print(f"[{label}] {what} -> {uri}", flush=True)
    started = time.perf_counter()
    yield
    timeline.stages[label] = time.perf_counter() - started
    print(f"[{label}] done in {duration(timeline.stages[label])}", flush=True)


def summary(report: str) -> str:
    """The comparison table of the report's models, the distilled student's gain over scratch, the
    time each stage took (or "reused") and where the report is."""
    from distkd import storage

    models = storage.read_json(storage.join(report, "metrics.json"))["models"]
    header = ("model", "params", "accuracy", "macro F1", "agreement with teacher")
    rows = [header] + [
        (
            m["name"],
            f"{m['cost']['params']:,}",
            f"{100 * m['metrics']['accuracy']:.2f}%",
            f"{m['metrics']['f1_macro']:.4f}",
            "" if m["metrics"].get("teacher_agreement") is None else f"{100 * m['metrics']['teacher_agreement']:.2f}%",
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    accuracy = {m["role"]: m["metrics"]["accuracy"] for m in models}
    if {"distilled", "scratch"} <= accuracy.keys():
        gain = 100 * (accuracy["distilled"] - accuracy["scratch"])
        lines.append(f"distilled student vs from scratch: {gain:+.2f} points")
    stages = ", ".join(f"{s} {'reused' if t is None else duration(t)}" for s, t in timeline.stages.items())
    if stages:
        lines.append(f"stages: {stages}")
    lines.append(f"report: {storage.join(report, 'report.html')}")
    return "\n".join(lines)


# -- progress -----------------------------------------------------------------------------------------


class _PlainLines:
    """A file for tqdm that turns its carriage-return redraws into whole lines, one per count of rows done."""

    def __init__(self, stream) -> None:
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            line, done = line.strip(), line.split("%")[0]  # the rate changes as time passes; the count may not
            if line and done != self.last:
                self.stream.write(line + "\n")
                self.last = done

    def flush(self) -> None:
        self.stream.flush()


def progress(items: Iterable[T], total: int, label: str, rows: Callable[[T], int] = len) -> Iterator[T]:
    """Yield ``items`` while a bar shows rows done of ``total``, rows/s and the time left."""
    interactive = sys.stdout.isatty()
    fmt = "[{desc}] {n_fmt}/{total_fmt} rows {percentage:3.0f}%, {rate_fmt}, ETA {remaining}"
    bar = tqdm(
        total=total,
        desc=label,
        unit=" rows",
        file=sys.stdout if interactive else _PlainLines(sys.stdout),
        mininterval=0.2 if interactive else PLAIN_INTERVAL,
        bar_format=fmt.replace("rows ", "rows |{bar:20}| ") if interactive else fmt,
        dynamic_ncols=interactive,
    )
    with bar:
        for item in items:
            bar.update(rows(item))
            yield item


def epoch_line(label: str, epochs: int, m: dict[str, Any]) -> str:
    return (
        f"[{label}] epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f} (kd {m['kd']:.4f} + ce {m['ce']:.4f})  "
        f"val_acc {m['val_accuracy']:.4f}  {m['samples_per_s']:.0f} samples/s  {duration(m['seconds'])}"
    )


# -- Ray's logs ---------------------------------------------------------------------------------------


class RayLogs:
    """Keeps Ray's loggers and Python warnings off the terminal: records are held in memory until
    Ray has a session folder, then written to ``<session>/logs/distkd.log``."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.path: str | None = None
        held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self.handler: logging.Handler = held
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.captureWarnings(True)
        self._redirect()

    def ray_init_options(self) -> dict:
        """``ray.init`` arguments: workers' output reaches the terminal only when verbose."""
        return {"log_to_driver": self.verbose, "configure_logging": self.verbose}

    def _redirect(self) -> None:
        """Every Ray logger (and ``py.warnings``) that writes to the terminal writes to the log instead
        (as well, when verbose)."""
        names = ["py.warnings", "ray", *(n for n in logging.Logger.manager.loggerDict if n.startswith("ray."))]
        for name in names:
            logger = logging.getLogger(name)
            if name == "py.warnings":
                logger.propagate = self.verbose
            terminal = [h for h in logger.handlers if _is_terminal(h)]
            if not self.verbose:
                for h in terminal:
                    logger.removeHandler(h)
            if (terminal or name in ("ray", "py.warnings")) and self.handler not in logger.handlers:
                logger.addHandler(self.handler)

    def open(self) -> str:
        """After ``ray.init``: the log file in the session folder, with what was held so far."""
        import ray

        folder = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, LOG_FILE)
        file = logging.FileHandler(self.path)
        file.setFormatter(self.handler.formatter)
        held = self.handler
        held.setTarget(file)
        held.flush()
        self.handler = file
        for logger in [logging.getLogger(n) for n in ["py.warnings", "ray", *logging.Logger.manager.loggerDict]]:
            if held in logger.handlers:
                logger.removeHandler(held)
        self._redirect()  # loggers that Ray created since
        self._quiet_ray_data()
        return self.path

    def _quiet_ray_data(self) -> None:
        """Ray Data draws no progress bars of its own: the driver's bars and lines replace them."""
        if self.verbose:
            return
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.enable_auto_log_stats = False


def _is_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream in (sys.stdout, sys.stderr) or type(handler).__name__ == "PlainRayHandler"
