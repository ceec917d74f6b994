"""Run notebooks and keep their outputs in them, less the noise, so that a reader sees every figure without running:
`python tools/outputs.py nbs/*.ipynb nbs/tutorials/*.ipynb` (`make outputs`), then `nbdev_clean`.

Kept: figures, tables, printed results, warnings and errors. Left out: live widgets' views (a widget of embed_nb also
carries its figure as a PNG, which stays; one without a picture, such as a progress bar, has nothing to show without
its kernel) and the notebook's saved widget state. Prints each notebook's run time."""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

WIDGET = "application/vnd.jupyter.widget-view+json"


def strip_noise(nb) -> int:
    "Drop widget views from `nb`'s outputs (keeping a widget's PNG); the number of outputs left out."
    dropped = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET in data:
                if "image/png" not in data:
                    dropped += 1
                    continue
                out["data"] = {k: v for k, v in data.items() if k != WIDGET}
            kept.append(out)
        cell["outputs"] = kept
    nb.metadata.pop("widgets", None)
    return dropped


def run(path: Path, timeout: int = 1200) -> float:
    "Execute notebook `path` in its own folder, keep its outputs (less the noise); the seconds it took."
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    # the kernel is stopped at once after the last cell: a graceful shutdown sometimes waited tens of seconds here
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    took = time.time() - start
    strip_noise(nb)
    nbformat.write(nb, path)
    return took


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"{p}: {run(Path(p)):.0f} s", flush=True)
