"""What ``distkd`` prints: a line when a stage starts and ends, progress bars, one line per epoch, the stages' times.

Everything is printed by the driver, once. Ray's own logs and warnings (its loggers, Python
warnings, and what workers print) go to ``distkd.log`` in the Ray session's log folder instead
of the terminal, unless ``--verbose``. When stdout is not a terminal, progress bars become
plain lines every ``PLAIN_INTERVAL`` seconds.
"""

from __future__ import annotations

import atexit
import io
import logging
import logging.handlers
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

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
    """Each stage of this run, in order: seconds it took, or None where its output was reused; and the span from
    the first computed stage's start to the last one's end (stages may run at once: the students)."""

    stages: dict[str, float | None] = field(default_factory=dict)
    spans: list[tuple[float, float]] = field(default_factory=list)

    def clear(self) -> None:
        self.stages.clear()
        self.spans.clear()

    def wall(self) -> float | None:
        return max(e for _, e in self.spans) - min(s for s, _ in self.spans) if self.spans else None

    def line(self) -> str:
        """``stages: teacher 5m13s, softlabels reused, ...; 11m49s in all``, or "" before any stage."""
        if not self.stages:
            return ""
        stages = ", ".join(f"{s} {'reused' if t is None else duration(t)}" for s, t in self.stages.items())
        wall = self.wall()
        return f"stages: {stages}" + (f"; {duration(wall)} in all" if wall else "")


timeline = Timeline()


_printing = threading.Lock()


def table(rows: list[tuple[str, ...]] | list[list[str]]) -> list[str]:
    """A plain-text table, a line a row: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def say(line: str) -> None:
    """One line to stdout in one write: the students' stages run on threads of their own, and ``print`` writes the
    text and its newline apart, so two lines printed at once could share one."""
    with _printing:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def reusing(label: str, what: str, uri: str) -> None:
    say(f"[{label}] reusing {what} {uri}")
    timeline.stages[label] = None


@contextmanager
def computing(label: str, what: str, uri: str) -> Iterator[None]:
    """One line as the stage starts (``what`` it computes, into ``uri``), one as it ends."""
    say(f"[{label}] {what} -> {uri}")
    started = time.perf_counter()
    yield
    ended = time.perf_counter()
    timeline.stages[label] = ended - started
    timeline.spans.append((started, ended))
    say(f"[{label}] done in {duration(timeline.stages[label])}")


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
        position=0,  # one bar at a time: never below a bar an abandoned generator has not closed yet
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
    """Keeps what Ray says in this process off the terminal: its loggers' records, Python warnings and other
    libraries' records (the root logger), and what its C++ core writes to file descriptor 2 (such as
    ``core_worker.cc``'s notice on every Ray Data actor pool's MapWorker, whose constructor arguments Ray Data
    itself puts in the object store). Records are held in memory and native output in a temporary file until
    Ray has a session folder; then both go to ``<session>/logs/distkd.log``."""

    def __init__(self, verbose: bool) -> None:
        import ray  # noqa: F401  (Ray sets its loggers up as it is imported: before they are redirected)

        self.verbose = verbose
        self.path: str | None = None
        held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self.handler: logging.Handler = held
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # verbose: what no logger of its own prints still reaches the terminal, as Python's lastResort would
        self.terminal = logging.StreamHandler() if verbose else None
        if self.terminal:
            self.terminal.setLevel(logging.WARNING)
        logging.captureWarnings(True)
        if not verbose:  # Tune's newer console output prints its experiment's box even at verbose 0; the older prints
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # nothing at 0, and ``distkd sweep`` prints its own lines
        self.native = None if verbose else _hold_native_stderr()
        if not verbose and sys.stdout is sys.__stdout__ and sys.stdout is not None:
            sys.stdout = RayThreadsToLog(sys.stdout)
            atexit.register(shutdown_ray)  # runs before Ray's own exit hook, registered as Ray was imported
        self._redirect()

    def ray_init_options(self) -> dict:
        """``ray.init`` arguments: workers' output reaches the terminal only when verbose."""
        return {"log_to_driver": self.verbose, "configure_logging": self.verbose}

    def _redirect(self) -> None:
        """Every logger writes to the log, not the terminal (as well, when verbose). The root logger holds the log:
        Python warnings and other libraries' records reach it, and so do Ray's when quiet, as "ray" then propagates:
        ``ray.init(configure_logging=False)`` clears that logger's handlers, and a record finding no handler would
        reach the terminal through ``logging.lastResort``."""
        top = logging.getLogger("ray")
        top.propagate = not self.verbose
        for logger in [top, *(logging.getLogger(n) for n in logging.Logger.manager.loggerDict if n.startswith("ray."))]:
            terminal = [h for h in logger.handlers if _is_terminal(h)]
            if not self.verbose:
                for h in terminal:
                    logger.removeHandler(h)
            if (terminal or logger is top) and not logger.propagate and self.handler not in logger.handlers:
                logger.addHandler(self.handler)
        root = logging.getLogger()
        for handler in (self.handler, self.terminal):
            if handler and handler not in root.handlers:
                root.addHandler(handler)

    def open(self) -> str:
        """After ``ray.init``: the log file in the session folder, with what was held so far."""
        import ray

        context = ray.get_runtime_context()
        folder = os.path.join(context.get_temp_dir(), context.get_session_name(), "logs")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, LOG_FILE)
        file = logging.FileHandler(self.path)
        file.setFormatter(self.handler.formatter)
        held = self.handler
        held.setTarget(file)
        held.flush()
        self.handler = file
        for logger in [logging.getLogger(), *(logging.getLogger(n) for n in logging.Logger.manager.loggerDict)]:
            if held in logger.handlers:
                logger.removeHandler(held)
        self._redirect()  # loggers that Ray created since
        if self.native:
            _release_native_stderr(self.native, self.path)
            self.native = None
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


class RayThreadsToLog(io.TextIOBase):
    """``sys.stdout`` of a quiet console: what Ray's own driver threads print goes to the log, the rest to the
    terminal. Ray's thread that listens for the raylet's notices prints them to ``sys.stdout`` whatever
    ``log_to_driver`` says (such as the worker pool's "8 PYTHON worker processes have been started ...", when
    two training runs start at once). Ray's log deduplicator holds back a notice that repeats, and
    ``ray.shutdown`` prints what it held on the thread that shuts Ray down: ``shutting_down`` sends that to the
    log too."""

    def __init__(self, terminal: IO[str]) -> None:
        self.terminal = terminal
        self.shutting_down = False

    def write(self, text: str) -> int:
        if not (self.shutting_down or threading.current_thread().name.startswith("ray_")):
            return self.terminal.write(text)
        if text.strip():  # print's own newline comes apart from the text
            logging.getLogger("ray.driver_output").warning(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:
        return self.terminal.encoding


def shutdown_ray() -> None:
    """``ray.shutdown()``; on a quiet console, what Ray prints as it disconnects goes to the log. The ``distkd``
    command calls it as it ends; a quiet console also runs it at exit, ahead of Ray's own exit hook."""
    import ray

    out = sys.stdout
    quiet = isinstance(out, RayThreadsToLog)
    if quiet:
        out.shutting_down = True
    try:
        ray.shutdown()
    finally:
        if quiet:
            out.shutting_down = False


def _hold_native_stderr() -> IO[bytes] | None:
    """Point file descriptor 2 at a temporary file and ``sys.stderr`` at a copy of the terminal's: native code
    writes to the file, Python code (distkd's messages, a traceback) still to the terminal. Nothing is moved
    where ``sys.stderr`` is not the process's own (a test capturing it)."""
    if sys.stderr is not sys.__stderr__ or sys.stderr is None:
        return None
    sys.stderr.flush()
    terminal = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.__stderr__.encoding, errors="backslashreplace")
    return held


def _release_native_stderr(held: IO[bytes], path: str) -> None:
    """What native code wrote so far appended to ``path``, and file descriptor 2 pointed at it from now on."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    held.seek(0)
    os.write(fd, held.read())
    os.dup2(fd, 2)
    os.close(fd)
    held.close()


def _is_terminal(handler: logging.Handler) -> bool:
    terminals = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return getattr(handler, "stream", None) in terminals or type(handler).__name__ == "PlainRayHandler"
