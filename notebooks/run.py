"""Execute a notebook headlessly (a fresh kernel) and print its text outputs.

    python notebooks/run.py notebooks/quickstart.ipynb

Used by ``make demo``: the printed outputs end with the run's timing summary.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def text_outputs(cell: nbformat.NotebookNode) -> list[str]:
    """The text a reader would see for a cell: streams, results and displays (text/plain)."""
    texts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            texts.append(out["text"])
        elif "data" in out and "application/vnd.jupyter.widget-view+json" not in out["data"]:
            texts.append(out["data"].get("text/plain", "") + "\n")
    return texts


def main(path: str) -> int:
    """Run the notebook at ``path``; print every code cell's text output."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(path).parent)}},
    ).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print(f">>> {cell.source.strip().splitlines()[0] if cell.source.strip() else ''}")
        for text in text_outputs(cell):
            print(text, end="")
    print(f"\n{path} executed in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "notebooks/quickstart.ipynb"))
