"""The processes a test may signal: only its own descendants, never a neighbouring test process's (pytest-xdist
runs test processes side by side, each with a Ray of its own)."""

from __future__ import annotations

import psutil


def descendants(process: psutil.Process | None = None) -> list[psutil.Process]:
    """Every process ``process`` (this one by default) started, and theirs; none once it has exited."""
    try:
        return (process or psutil.Process()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_line(process: psutil.Process) -> list[str]:
    """``process``'s command line; empty once it has exited (it may, between a listing and this read)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []
