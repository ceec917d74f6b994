"""LLM-based (decoder) embedders: last-token pooling, a default query prompt, gradient checkpointing and LoRA, in one
process and in two (DDP, FSDP, DeepSpeed ZeRO-1/2 on CPU processes), which must equal one process as the BERT runs do."""
import json
import pytest
import torch
from sentence_transformers import SentenceTransformer
from conftest import EXAMPLES, example_texts
from test_distributed import HAS_DEEPSPEED, assert_same_run, losses, weights
from embed_nb.train import launch, train

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}

@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    from embed_nb.model import make_tiny_decoder
    return make_tiny_decoder(tmp_path_factory.mktemp("decoder"), example_texts() + ["instruct find the answer"])

def config(model, out, **kw):
    return {**dict(model_name_or_path=model, train_dataset=str(EXAMPLES / "hard_neg.jsonl"), output_dir=str(out), batch_size=8,
                   neg_nums=2, max_steps=5, log_interval=1, lr=5e-3, warmup_proportion=0.0, save_on_epoch_end=False, seed=7,
                   query_prompt="instruct find the answer ", lora=LORA), **kw}

def test_lora_trains_only_the_adapters_and_saves_a_plain_model(decoder, tmp_path):
    saved = train(config(decoder, tmp_path / "run", gradient_checkpointing=True, eval_dataset=str(EXAMPLES / "eval")))
    rec = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rec if "loss" in r] == [1, 2, 3, 4, 5] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rec if "loss" in r)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["lora"] == LORA
    base, tuned = weights(decoder), weights(saved)  # a plain Qwen2 folder: the adapters are merged
    assert base.keys() == tuned.keys()
    moved = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved), moved
    assert not (saved / "adapter_config.json").exists()

def test_lora_merge_false_saves_the_adapters_alone(decoder, tmp_path):
    saved = train(config(decoder, tmp_path / "run", max_steps=2, lora={**LORA, "merge": False}))
    assert (saved / "adapter_config.json").exists() and not (saved / "model.safetensors").exists()
    from safetensors.torch import load_file
    adapters = load_file(saved / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    plain = train(config(decoder, tmp_path / "merged", max_steps=2))  # the same run, merged
    texts = ["the cat sat", "a dog"]
    got = SentenceTransformer(str(saved), device="cpu").encode(texts)
    want = SentenceTransformer(str(plain), device="cpu").encode(texts)
    assert abs(got - want).max() < 1e-5

def test_query_prompt_reaches_the_queries(decoder, tmp_path):
    from embed_nb.data import EmbeddingDataset
    ds = EmbeddingDataset(EXAMPLES / "hard_neg.jsonl", query_prompt="instruct find the answer ")
    assert all(ex["query"].startswith("instruct find the answer ") for ex in ds.examples)

def test_bad_lora_target_is_one_line(decoder, tmp_path):
    from embed_nb.core import ConfigError
    with pytest.raises(ConfigError, match=r"lora: target_modules \['query'\] are not in the model"):
        train(config(decoder, tmp_path / "bad", lora={"r": 4, "target_modules": ["query"]}))

needs_ds = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")

@pytest.mark.parametrize("strategy", ["ddp", "fsdp", pytest.param("deepspeed1", marks=needs_ds), pytest.param("deepspeed2", marks=needs_ds)])
def test_two_processes_equal_one(decoder, tmp_path, strategy):
    zero_stage = int(strategy[-1]) if strategy.startswith("deepspeed") else 2
    strategy = strategy.rstrip("12")
    train(config(decoder, tmp_path / "single"))
    launch(config(decoder, tmp_path / "multi", batch_size=4), num_processes=2, strategy=strategy, zero_stage=zero_stage)
    assert json.loads((tmp_path / "multi" / "run.json").read_text())["world_size"] == 2
    assert_same_run(tmp_path / "single", tmp_path / "multi")
    start, end = weights(decoder), weights(tmp_path / "multi" / "model")
    assert max((end[k] - start[k]).abs().max().item() for k in start) > 1e-4  # the adapters learned

def test_spec_fsdp_yaml_on_a_decoder_names_the_layer_key(decoder, tmp_path):
    "The spec's FSDP yaml wraps BertLayer; a Qwen2 decoder has none: one line naming the key and the model's layer."
    import os, subprocess, sys
    from pathlib import Path
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config(decoder, tmp_path / "out", max_steps=2).items()))
    exe = Path(sys.executable).parent / "accelerate"
    r = subprocess.run([str(exe), "launch", "--config_file", str(EXAMPLES / "accelerate" / "default_fsdp.yaml"), "--num_processes", "1",
                        "-m", "embed_nb.train", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    # the process exits 2 with one line; accelerate's launcher (torch elastic) then adds its own report and exits 1
    assert r.returncode != 0 and "(exitcode: 2)" in r.stderr, r.stderr[-3000:]
    first = r.stderr.split("embed-nb: error: ", 1)[1].splitlines()[0]
    assert first.startswith("fsdp_transformer_layer_cls_to_wrap: BertLayer is not a layer of") and "its layer class is Qwen2DecoderLayer" in first
    assert not (tmp_path / "out").exists()
