"""Where a row of a split is, as messages name it: its file and id, or its file and index in that file.

Below both the checks of a job and the input kinds, which each refuse rows by where they are.
"""

from __future__ import annotations

from distkd.data.source import Split


def row(split: Split, index: int) -> str:
    """``<file>: row id '<id>'`` for the ``index``-th row in use of ``split``."""
    id_ = split.read_table(["id"])["id"][index].as_py()
    return f"{locate(split, index)[0]}: row id '{id_}'"


def place(split: Split, index: int) -> str:
    """``<file> row <n>`` (counted from 0 in the file) for the ``index``-th row in use of ``split``."""
    file, n = locate(split, index)
    return f"{file} row {n}"


def locate(split: Split, index: int) -> tuple[str, int]:
    """The file that holds the ``index``-th row in use of ``split``, and the row's index in that file."""
    for file, rows in split.file_rows():
        if index < rows:
            return file, index
        index -= rows
    raise IndexError(index)
