"""Execute one notebook on the seqlab kernel with nbclient; used by kernel/repro.ts.

Usage: nbrun.py IN.ipynb OUT.ipynb TIMEOUT_SECONDS
Prints one JSON line per event on stdout: {"event": "start", "cells": N}, then per code cell
{"event": "cell", "index": i, "ok": bool, "seconds": s, "error": "..."}, then {"event": "end", ...}.
A cell fails when it raises, unless it is tagged raises-exception; the first failure stops the run
(later cells usually depend on it). The executed notebook is written either way.
"""
import json
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError


def emit(**kw):
    print(json.dumps(kw), flush=True)


def main():
    src, dst, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nb = nbformat.read(src, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    emit(event="start", cells=len(code_cells))
    started = {}

    def on_cell_start(cell, cell_index):
        started[cell_index] = time.time()

    def on_cell_executed(cell, cell_index, execute_reply):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        expected = "raises-exception" in cell.get("metadata", {}).get("tags", [])
        emit(event="cell", index=code_cells.index(cell_index), ok=not errors or expected, expected_error=expected,
             seconds=round(time.time() - started.get(cell_index, time.time()), 3),
             error=(f'{errors[0].get("ename")}: {errors[0].get("evalue")}' if errors else None))

    client = NotebookClient(nb, timeout=timeout, kernel_name="seqlab", allow_errors=False,
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(src))}},
                            on_cell_start=on_cell_start, on_cell_executed=on_cell_executed)
    t0 = time.time()
    status, message = "ok", None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        status, message = "failed", str(e).strip().splitlines()[-1][:500] if str(e).strip() else type(e).__name__
    except Exception as e:  # kernel failed to start, unreadable notebook, ...
        status, message = "failed", f"{type(e).__name__}: {e}"[:500]
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    nbformat.write(nb, dst)
    emit(event="end", status=status, message=message, seconds=round(time.time() - t0, 3))
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
