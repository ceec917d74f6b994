"""Training in-process: seeded runs repeat exactly, bf16 mixed precision runs on CPU, negatives are redrawn per epoch."""
import json
from pathlib import Path
import numpy as np
from embed_nb.train import train
from conftest import EXAMPLES

def losses(out): return [json.loads(l)["loss"] for l in (Path(out) / "log.jsonl").read_text().splitlines()]

def small_run(tiny_model, out, **kw):
    cfg = dict(model_name_or_path=tiny_model, train_dataset=str(EXAMPLES / "hard_neg.jsonl"), neg_nums=2, batch_size=4,
               max_steps=4, log_interval=1, lr=1e-3, output_dir=str(out), save_on_epoch_end=False)
    return train({**cfg, **kw})

def test_same_seed_same_run(tiny_model, tmp_path):
    small_run(tiny_model, tmp_path / "a", seed=3); small_run(tiny_model, tmp_path / "b", seed=3); small_run(tiny_model, tmp_path / "c", seed=4)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")

def test_bf16_on_cpu(tiny_model, tmp_path):
    small_run(tiny_model, tmp_path, mixed_precision="bf16", use_mrl=True, mrl_dims=[8, 32])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["mixed_precision"] == "bf16" and all(np.isfinite(losses(tmp_path)))
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert {"loss@8", "loss@32"} <= set(rec)

def test_gradient_accumulation_counts_optimizer_steps(tiny_model, tmp_path):
    "8 micro-batches accumulated by 4 are 2 optimizer steps: 2 log records, the lr schedule stepped twice."
    small_run(tiny_model, tmp_path, max_steps=2, gradient_accumulation_steps=4, warmup_proportion=0.0)
    log = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert log[-1]["lr"] == 0.0  # cosine schedule over 2 steps ends at zero
