"""How many rows of a batch one model call takes: the one chunking rule of every batched prediction."""

from __future__ import annotations


def rows_per_call(rows: int, chunk_size: int, group: int = 1, inputs_per_row: int = 1) -> int:
    """Rows per model call when a call may hold at most ``chunk_size`` inputs.

    Args:
        rows: rows of the whole batch.
        chunk_size: most inputs per call (0 = all rows in one call).
        group: rows that must stay together (the views of one object for a multi-view prior).
        inputs_per_row: model inputs a row costs (2 for a CFG pair, 4 for a CFG pair of two branches).

    Returns:
        A multiple of ``group``, at least one group.
    """
    if chunk_size <= 0:
        return rows
    return max(group, (chunk_size // inputs_per_row) // group * group)


def call_ranges(rows: int, per_call: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` row ranges of at most ``per_call`` rows covering ``rows``."""
    per_call = max(1, per_call)
    return [(s, min(rows, s + per_call)) for s in range(0, rows, per_call)]
