"""What a store holds (``distkd store ls``): teachers, soft-label entries, student runs and reports,
with their size, creation time, the job that made them and, for runs and reports, accuracy."""

from __future__ import annotations

import datetime
import json

import pyarrow.fs as pafs

from distkd import labelstore, storage
from distkd.config import ConfigError
from distkd.specs import TrainingRun

FOLDERS = ("runs", "softlabels", "reports", "tokenizers", "sweeps")  # what the stages make in a store


def check_store(store: str, argument: str = "--store") -> str:
    """``store`` when it is a store (a folder holding one of ``FOLDERS``); else a ``ConfigError`` naming the
    ``argument`` and saying what is there instead, so that a command that lists or cleans a store never reports
    "nothing" of a mistyped path, a file or a code folder."""
    fs, path = storage.resolve(store)
    found = fs.get_file_info(path).type
    if found == pafs.FileType.NotFound:
        raise ConfigError(f"{argument} {store}: no such folder (expected a store, as a job's 'store' names it)")
    if found != pafs.FileType.Directory:
        raise ConfigError(f"{argument} {store}: a file, not a store folder")
    if not any(i.type == pafs.FileType.Directory for i in fs.get_file_info([f"{path}/{f}" for f in FOLDERS])):
        raise ConfigError(
            f"{argument} {store}: not a distkd store (it holds none of {', '.join(f + '/' for f in FOLDERS)})"
        )
    return store


def run_record(weights: str) -> dict:
    """What the report shows of the run folder holding ``weights``, where it has them: ``history`` (per
    epoch), ``trained_rows`` (the rows of each kind an epoch trained on: ``labelled``, ``unlabelled``) and
    ``settings`` (job, role, model, epochs, seed and, for a KD run, alpha, temperature and the soft labels' format,
    views and the rows/s the teacher made them at)."""
    folder = weights.rsplit("/", 1)[0]
    record = {}
    if storage.exists(storage.join(folder, TrainingRun.HISTORY)):
        record["history"] = storage.read_json(storage.join(folder, TrainingRun.HISTORY))
        last = record["history"][-1]
        labelled = last.get("labelled", last["samples"])  # a run from before unlabelled rows had labels on every row
        record["trained_rows"] = {"labelled": labelled, "unlabelled": last["samples"] - labelled}
    if not storage.exists(storage.join(folder, TrainingRun.INFO)):
        return record
    run = storage.read_json(storage.join(folder, TrainingRun.INFO))
    kd = run.get("kd") or {}
    settings = {
        "job": run["job"],
        "role": run["role"],
        "model": run["model"]["name"],
        "epochs": run["train"]["epochs"],
        "seed": run["train"].get("seed"),
        "alpha": kd.get("alpha"),
        "temperature": kd.get("temperature"),
    }
    entry = storage.join(folder.rsplit("/", 2)[0], "softlabels", kd["softlabels"]) if kd.get("softlabels") else None
    if entry and storage.is_committed(entry):
        m = labelstore.manifest(entry)
        fmt = m.format
        settings["labels"] = f"{fmt.layout}{'-' + str(fmt.top_k) if fmt.top_k else ''} {fmt.dtype}"
        settings["views"] = m.views
        settings["label_rows_per_second"] = m.rows_per_second
    record["settings"] = settings
    return record


def _size_and_created(folder: str) -> tuple[int, str]:
    """Bytes of every file under ``folder`` and the time its commit marker was written."""
    fs, path = storage.resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    size = sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)
    marker = fs.get_file_info(f"{path}/{storage.COMMIT_MARKER}")
    created = marker.mtime or max((i.mtime for i in infos if i.mtime), default=None)
    stamp = created.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else ""
    return size, stamp


def _runs(store: str) -> list[dict]:
    rows = []
    for folder in storage.list_folders(storage.join(store, "runs")):
        if not storage.is_committed(folder):
            continue
        record = run_record(storage.join(folder, TrainingRun.WEIGHTS))
        info, history = record.get("settings", {}), record.get("history", [])
        size, created = _size_and_created(folder)
        name = folder.rsplit("/", 1)[-1]
        role = info.get("role") or name.rsplit("-", 1)[0]
        rows.append(
            {
                "kind": "teacher" if role == "teacher" else "run",
                "name": name,
                "uri": folder,
                "job": info.get("job", ""),
                "what": f"{info.get('model', '?')} {role}, {len(history)} epochs",
                "accuracy": history[-1]["val_accuracy"] if history else None,
                "size": size,
                "created": created,
            }
        )
    return rows


def _softlabels(store: str) -> list[dict]:
    rows = []
    for entry in labelstore.entries(store):
        m = labelstore.manifest(entry)
        views = f" x{m.views} views" if m.views else ""
        rows.append(
            {
                "kind": "softlabels",
                "name": m.key,
                "uri": entry,
                "job": "",  # an entry belongs to every job that asks for it
                "what": f"{m.inputs['teacher']['name']} {m.format.layout} {m.format.dtype}{views}, {m.rows} rows",
                "accuracy": None,
                "size": _size_and_created(entry)[0],
                "created": m.created,
            }
        )
    return rows


def _reports(store: str) -> list[dict]:
    rows = []
    for folder in storage.list_folders(storage.join(store, "reports")):
        if not storage.is_committed(folder):
            continue
        metrics = storage.read_json(storage.join(folder, "metrics.json"))
        size, created = _size_and_created(folder)
        models = metrics["models"]
        rows.append(
            {
                "kind": "report",
                "name": folder.rsplit("/", 1)[-1],
                "uri": folder,
                "job": metrics.get("job", ""),
                "what": ", ".join(m["role"] for m in models),
                "accuracy": {m["role"]: m["metrics"]["accuracy"] for m in models},
                "size": size,
                "created": created,
            }
        )
    return rows


def listing(store: str) -> list[dict]:
    """Everything committed in ``store``: teachers, soft labels, student runs, reports (in that order)."""
    runs = _runs(store)
    order = {"teacher": 0, "softlabels": 1, "run": 2, "report": 3}
    return sorted([*runs, *_softlabels(store), *_reports(store)], key=lambda r: (order[r["kind"]], r["created"]))


def _accuracy(value: float | dict | None) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return " ".join(f"{role} {100 * a:.2f}%" for role, a in value.items())
    return f"{100 * value:.2f}% (val)"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def format_listing(rows: list[dict], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return "(nothing committed in this store)"
    header = ("kind", "name", "job", "what", "accuracy", "size", "created")
    table = [header] + [
        (r["kind"], r["name"], r["job"], r["what"], _accuracy(r["accuracy"]), _size(r["size"]), r["created"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
