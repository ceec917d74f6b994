"""Training in-process: seeded runs repeat exactly, bf16 mixed precision runs on CPU, gradient accumulation counts
optimizer steps."""

import json

import numpy as np
import torch
from conftest import EXAMPLES, log_records, losses, run_config

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


def _pairs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [json.loads(line) for line in open(EXAMPLES / "hard_neg.jsonl")][:16]
    pairs.write_text("".join(json.dumps({"query": r["query"], "pos": r["pos"]}) + "\n" for r in rows))
    return pairs


def _mean(res, metric="ndcg@10"):
    return sum(m[metric] for m in res.values()) / len(res)


def test_keep_best_tries_the_average_of_the_last_checkpoints(tiny_model, tmp_path):
    """A run that saved checkpoints also tries its final weights averaged with the newest two, and each checkpoint; the
    first candidate within the tolerance of the best is kept; the saved model is the kept one; per dimension, the
    candidate best there is recorded."""
    from embed_nb.evaluate import evaluate, load_retrieval_data
    from embed_nb.model import Embedding
    from embed_nb.train import AVERAGED, MIX_TOLERANCE, average_weights

    pairs = _pairs(tmp_path)
    out = tmp_path / "run"
    cfg = run_config(tiny_model, out, train_dataset=str(pairs), batch_size=4, max_steps=4, save_steps=1)
    train({**cfg, "eval_dataset": str(pairs), "use_mrl": True, "mrl_dims": [8, 32], "num_max_checkpoints": 5})
    kept = next(r["kept"] for r in log_records(out) if "kept" in r)
    assert AVERAGED == 3 and kept["average"]["of"] == ["checkpoint-step-2", "checkpoint-step-3", "the final weights"]
    assert list(kept["checkpoints"]) == ["checkpoint-step-1", "checkpoint-step-2", "checkpoint-step-3"]
    data = load_retrieval_data(str(pairs))
    for name, score in kept["checkpoints"].items():  # each checkpoint was evaluated as it is on disk
        res = evaluate(Embedding.from_pretrained(out / name), data, dims=[8, 32], ks=[10])
        assert abs(_mean(res) - score) < 1e-5, (name, _mean(res), score)
    scores = {**{float(s): v for s, v in kept["scores"].items()}, "average": kept["average"]["score"]}
    scores.update(kept["checkpoints"])
    order = [1.0, "average", "checkpoint-step-3", "checkpoint-step-2", "checkpoint-step-1", 0.75, 0.5, 0.25, 0.0]
    best = next(c for c in order if scores[c] >= max(scores.values()) - MIX_TOLERANCE)
    assert kept["choice"] == str(best) and kept["by"] == "mean"
    assert kept["average"]["kept"] == (best == "average") and kept["share"] == (
        best if isinstance(best, float) else 1.0
    )
    again = evaluate(Embedding.from_pretrained(out / "model"), data, dims=[8, 32], ks=[10])
    for d in (8, 32):
        assert abs(again[d]["ndcg@10"] - kept["eval"][str(d)]["ndcg@10"]) < 1e-5
        assert kept["best_per_dim"][str(d)]["ndcg@10"] >= kept["eval"][str(d)]["ndcg@10"]
        assert kept["fine_tuned"][str(d)] <= kept["best_per_dim"][str(d)]["ndcg@10"]
    card = (out / "model" / "README.md").read_text()
    assert "the average of checkpoint-step-2, checkpoint-step-3, the final weights" in card
    assert "checkpoint-step-1: " in card and f"Kept {kept['said']}" in card
    a, b = (
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])},
        {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([5])},
    )
    assert average_weights([a, b])["w"].tolist() == [2.0, 4.0] and average_weights([a, b])["n"].tolist() == [3]


def test_keep_best_at_one_dimension(tiny_model, tmp_path):
    "keep_best_dim chooses by the metric at that dimension; a dimension that is not evaluated is refused before step 1."
    import pytest

    from embed_nb.core import ConfigError
    from embed_nb.train import MIX_TOLERANCE

    pairs = _pairs(tmp_path)
    cfg = run_config(tiny_model, tmp_path / "run", train_dataset=str(pairs), batch_size=4, max_steps=4, save_steps=2)
    cfg.update(eval_dataset=str(pairs), use_mrl=True, mrl_dims=[8, 32])
    with pytest.raises(ConfigError, match="keep_best_dim: 16 is not one of the evaluated dimensions"):
        train({**cfg, "keep_best_dim": 16})
    assert not (tmp_path / "run" / "log.jsonl").exists()
    train({**cfg, "keep_best_dim": 8, "overwrite_output_dir": True})
    kept = next(r["kept"] for r in log_records(tmp_path / "run") if "kept" in r)
    at8 = (
        {float(s): v for s, v in kept["scores"].items()} | kept["checkpoints"] | {"average": kept["average"]["score"]}
    )
    choice = float(kept["choice"]) if kept["choice"][0].isdigit() else kept["choice"]
    assert kept["by"] == 8 and abs(kept["eval"]["8"]["ndcg@10"] - at8[choice]) < 1e-6  # scores are at 8 dims
    assert kept["eval"]["8"]["ndcg@10"] >= max(at8.values()) - MIX_TOLERANCE
    assert abs(kept["best_per_dim"]["8"]["ndcg@10"] - max(at8.values())) < 1e-6


def test_matryoshka_without_a_head(tiny_model, tmp_path):
    """`mrl_head: false` trains the dimensions as the first coordinates of the model's own vectors: the saved model has
    the base model's modules (less its final Normalize) and parameters, changed by training; a dimension wider than the
    model is refused before anything is written."""
    import pytest

    from embed_nb.core import ConfigError
    from embed_nb.model import Embedding

    cfg = run_config(tiny_model, tmp_path / "run", use_mrl=True, mrl_dims=[8, 32], mrl_head=False)
    with pytest.raises(ConfigError, match="own 32-wide vectors"):
        train({**cfg, "mrl_dims": [8, 64]})
    assert not (tmp_path / "run").exists()
    trained = Embedding.from_pretrained(str(train(cfg)))
    base = Embedding.from_pretrained(str(tiny_model))
    assert [type(m).__name__ for m in trained.model] == ["Transformer", "Pooling"]
    assert trained.mrl_dims == [8, 32] and trained.dim == 32
    before, after = base.state_dict(), trained.state_dict()
    assert set(before) == set(after)  # no layer added
    assert any(not torch.equal(before[k], after[k]) for k in before)  # and the model's own weights trained
    last = log_records(tmp_path / "run")[-1]
    assert np.isfinite(last["loss@8"]) and np.isfinite(last["loss@32"])
    with_head = Embedding.from_pretrained(str(tiny_model), use_mrl=True, mrl_dims=[8, 32])
    assert type(with_head.model[-1]).__name__ == "Dense"  # the default, for comparison
