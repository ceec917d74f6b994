"""Training in-process: seeded runs repeat exactly, bf16 mixed precision runs on CPU, gradient accumulation counts
optimizer steps."""

import json

import numpy as np
from conftest import log_records, losses, run_config

from embed_nb.train import train


def small_run(tiny_model, out, **kw):
    return train(run_config(tiny_model, out, **{"batch_size": 4, "max_steps": 4, "lr": 1e-3, **kw}))


def test_same_seed_same_run(tiny_model, tmp_path):
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        small_run(tiny_model, tmp_path / name, seed=seed)
    assert losses(tmp_path / "a").tolist() == losses(tmp_path / "b").tolist()
    assert losses(tmp_path / "a").tolist() != losses(tmp_path / "c").tolist()


def test_bf16_on_cpu(tiny_model, tmp_path):
    small_run(tiny_model, tmp_path, mixed_precision="bf16", use_mrl=True, mrl_dims=[8, 32])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["mixed_precision"] == "bf16" and all(np.isfinite(losses(tmp_path)))
    assert {"loss@8", "loss@32"} <= set(log_records(tmp_path)[-1])


def test_gradient_accumulation_counts_optimizer_steps(tiny_model, tmp_path):
    "8 micro-batches accumulated by 4 are 2 optimizer steps: 2 log records, the lr schedule stepped twice."
    small_run(tiny_model, tmp_path, max_steps=2, gradient_accumulation_steps=4, warmup_proportion=0.0)
    log = log_records(tmp_path)
    assert [r["step"] for r in log] == [1, 2]
    assert log[-1]["lr"] == 0.0  # cosine schedule over 2 steps ends at zero
