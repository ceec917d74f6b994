"""The command line end to end: every format trains from a yaml config, the spec's own yaml runs, outputs are real."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, log_records
from sentence_transformers import SentenceTransformer


def run_cli(*args, cwd=ROOT):
    exe = Path(sys.executable).parent / "embed-nb"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ["pairs", "hard_neg", "scored", "distill"])
def test_each_format_trains_from_the_cli(name, tiny_model, tmp_path):
    out = tmp_path / name
    overrides = [
        f"model_name_or_path={tiny_model}",
        f"output_dir={out}",
        "max_steps=3",
        "log_interval=1",
        "batch_size=4",
    ]
    r = run_cli("train", "--config", EXAMPLES / "configs" / f"{name}.yaml", "--set", *overrides, "mixed_precision=no")
    assert r.returncode == 0, r.stderr[-3000:]
    log = log_records(out)
    assert [rec["step"] for rec in log] == [1, 2, 3] and all(np.isfinite(rec["loss"]) for rec in log)
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 1 and run["config"]["output_dir"] == str(out) and "torch" in run["versions"]
    model = SentenceTransformer(str(out / "model"), device="cpu")
    width = 384 if name in ("distill", "hard_neg") else 32  # MRL head: hidden -> max(mrl_dims)
    assert model.encode(["a test"]).shape[1] == width
    # tensorboard events are real: tensorboard's own reader finds the loss scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard events written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


def test_python_module_entry_point(tiny_model, tmp_path):
    "`python -m embed_nb.train --config x.yaml`, what `accelerate launch -m embed_nb.train` runs."
    cfg, overrides = EXAMPLES / "configs" / "pairs.yaml", ["max_steps=2", "save_on_epoch_end=false"]
    cmd = [sys.executable, "-m", "embed_nb.train", "--config", str(cfg), "--set", f"model_name_or_path={tiny_model}"]
    r = subprocess.run(
        cmd + [f"output_dir={tmp_path}", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "model" / "modules.json").is_file() and not list(tmp_path.glob("checkpoint-*"))


SPEC_YAML = """
# Model
model_name_or_path: "{model}" #or Alibaba-NLP/gte-Qwen2-7B-instruct
train_type: "train"


# Dataset
train_dataset: "{data}"
neg_nums: 15
query_max_len: 128
passage_max_len: 512
shuffle: true


# Training
output_dir: "{out}"
save_on_epoch_end: 1
num_max_checkpoints: 5



## Hyperparameters
temperature: 0.02
epochs: 2
lr: 2e-5
batch_size: 32
seed: 666
warmup_proportion: 0.1
gradient_accumulation_steps: 3
mixed_precision: fp16

##mrl
use_mrl: false
mrl_dims: "128, 256, 512, 768, 1024, 1280, 1536, 1792"



## Logging
log_interval: 10
log_with: "wandb" # "wandb" or "tensorboard"
"""


def test_spec_yaml_runs_unchanged(tiny_model, tmp_path):
    "RAG-Retrieval's training_embedding.yaml, with only the model and paths changed, on its own jsonl layout."
    data = tmp_path / "t2rank_small.jsonl"
    lines = (EXAMPLES / "hard_neg.jsonl").read_text().splitlines()[:40]
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "training_embedding.yaml"
    cfg.write_text(SPEC_YAML.format(model=tiny_model, data=data, out=tmp_path / "out"))
    r = run_cli("train", "--config", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    # 40 rows / batch 32 = 2 micro-batches per epoch, accumulated by 3: one optimizer step per epoch
    assert run["optimizer_steps"] == 2 and run["config"]["neg_nums"] == 15
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-epoch-*")) == [
        "checkpoint-epoch-1",
        "checkpoint-epoch-2",
    ]


def test_eval_command_at_binary_precision(tiny_model, tmp_path):
    "`embed-nb eval --precision binary` reports what the library computes with binary vectors, and says so."
    out = tmp_path / "r.json"
    r = run_cli(
        "eval",
        "--model",
        tiny_model,
        "--data",
        EXAMPLES / "eval",
        "--dims",
        "16,32",
        "--precision",
        "binary",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "binary vectors" in r.stdout, r.stdout
    from embed_nb.evaluate import evaluate, load_retrieval_data
    from embed_nb.model import Embedding

    model, data = Embedding.from_pretrained(tiny_model), load_retrieval_data(EXAMPLES / "eval")
    saved = json.loads(out.read_text())
    assert saved["precision"] == "binary"
    for dim, metrics in evaluate(model, data, dims=[16, 32], precision="binary").items():
        assert saved["results"][str(dim)] == pytest.approx(metrics, abs=1e-6)
    assert saved["results"] != json.loads(json.dumps(evaluate(model, data, dims=[16, 32]))), "binary is float32"
    bad = run_cli("eval", "--model", tiny_model, "--data", EXAMPLES / "eval", "--precision", "int4")
    assert bad.returncode == 2 and "invalid choice: 'int4'" in bad.stderr, bad.stderr


def test_eval_command_writes_json(tiny_model, tmp_path):
    "`embed-nb eval` reports, at each dimension and cut-off, what the library computes, and that is the real recall@k."
    out = tmp_path / "r.json"
    r = run_cli(
        "eval", "--model", tiny_model, "--data", EXAMPLES / "eval", "--dims", "16,32", "--k", "10,100", "--out", out
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())["results"]
    from embed_nb.evaluate import evaluate, load_retrieval_data
    from embed_nb.model import Embedding

    model, data = Embedding.from_pretrained(tiny_model), load_retrieval_data(EXAMPLES / "eval")
    direct = evaluate(model, data, dims=[16, 32], ks=[10, 100])
    assert set(res) == {"16", "32"}
    for dim, metrics in direct.items():  # the command reports what the library computes
        assert res[str(dim)] == pytest.approx(metrics, abs=1e-6)
    # recall@k recomputed here from the model's vectors: cosine over the first `dim` dimensions, the k best documents
    q, d = model.encode(list(data.queries.values())), model.encode(list(data.corpus.values()))
    unit = lambda a, dim: a[:, :dim] / np.linalg.norm(a[:, :dim], axis=1, keepdims=True)
    ids = np.array(list(data.corpus))
    for dim in (16, 32):
        ranked = np.argsort(-(unit(q, dim) @ unit(d, dim).T), axis=1)
        for k in (10, 100):
            found = [
                len(set(ids[row[:k]]) & set(data.qrels[qid])) / len(data.qrels[qid])
                for qid, row in zip(data.queries, ranked)
                if qid in data.qrels
            ]
            assert res[str(dim)][f"recall@{k}"] == pytest.approx(np.mean(found), abs=1e-6), (dim, k)
    assert res["16"]["recall@10"] < res["16"]["recall@100"] and res["16"] != res["32"]  # the k and the dims both count
    assert "ndcg@10" in r.stdout
