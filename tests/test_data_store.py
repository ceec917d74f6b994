"""Training from the data store on disk (`data_on_disk`) is training from memory: the same steps, the same model; several
processes build one store and share it; past the size threshold the store is used unasked."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, losses, run_config, weights, write_yaml

from embed_nb.train import train

# batches drawn in random order (no length grouping): from memory the first epoch is grouped on estimated lengths,
# from the store on exact ones, which would make other batches; from the second epoch on both group on exact lengths
SAME_BATCHES = dict(group_by_length=False, epochs=2, max_steps=None)


@pytest.mark.parametrize("data", ["hard_neg", "scored"])
def test_store_trains_as_memory_does(tiny_model, data, tmp_path):
    memory = run_config(tiny_model, tmp_path / "memory", data, data_on_disk=False, **SAME_BATCHES)
    disk = run_config(tiny_model, tmp_path / "disk", data, data_on_disk=True, data_cache_dir=str(tmp_path / "store"))
    train(memory)
    train({**disk, **SAME_BATCHES})
    assert (
        np.array_equal(losses(tmp_path / "memory"), losses(tmp_path / "disk")) and len(losses(tmp_path / "disk")) > 4
    )
    a, b = weights(tmp_path / "memory" / "model"), weights(tmp_path / "disk" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name[:5] for p in sorted((tmp_path / "store").glob("rows-*/*")) if p.is_dir()] == ["token"]


@pytest.mark.xdist_group("fixed_port")  # torchrun
def test_two_processes_build_one_store_and_share_it(tiny_model, tmp_path):
    store = tmp_path / "store"
    cfg = write_yaml(
        tmp_path / "c.yaml",
        run_config(tiny_model, tmp_path / "out", batch_size=4, data_on_disk=True, data_cache_dir=str(store)),
    )
    exe = Path(sys.executable).parent / "torchrun"
    r = subprocess.run(
        [str(exe), "--nproc_per_node", "2", "-m", "embed_nb.train", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["world_size"] == 2
    rows = list(store.glob("rows-*"))
    assert len(rows) == 1 and len(list(rows[0].glob("tokens-*"))) == 1  # built once, by one of them
    assert not list(store.glob(".*tmp*")) and not list(rows[0].glob(".*tmp*"))  # nothing half-built left


def test_a_large_file_goes_on_disk_unasked(tiny_model, tmp_path, monkeypatch):
    "`data_on_disk` unset: a file above `DISK_ABOVE` bytes gets its store beside it (here the threshold is 0 bytes)."
    import embed_nb.train

    data = tmp_path / "data" / "pairs.jsonl"
    data.parent.mkdir()
    shutil.copy(EXAMPLES / "pairs.jsonl", data)
    monkeypatch.setattr(embed_nb.train, "DISK_ABOVE", 0)
    train(run_config(tiny_model, tmp_path / "out", "pairs", train_dataset=str(data), max_steps=2))
    assert len(list((tmp_path / "data" / "pairs.jsonl.embed_nb").glob("rows-*/tokens-*"))) == 1
