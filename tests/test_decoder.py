"""LLM-based (decoder) embedders: last-token pooling, a default query prompt, gradient checkpointing and LoRA, in one
process and in two (DDP, FSDP, DeepSpeed ZeRO-1/2 on CPU processes), which must equal one process as the BERT runs
do."""

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, accelerate_launch, assert_same_run, example_texts, log_records, losses, max_change
from conftest import needs_deepspeed, run_config, weights, write_yaml
from sentence_transformers import SentenceTransformer

from embed_nb.train import launch, train

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
PROMPT = "instruct find the answer "


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    from embed_nb.model import make_tiny_decoder

    return make_tiny_decoder(tmp_path_factory.mktemp("decoder"), example_texts() + [PROMPT])


def config(model, out, **kw):
    return run_config(model, out, **{"lr": 5e-3, "query_prompt": PROMPT, "lora": LORA, **kw})


def test_lora_trains_only_the_adapters_and_saves_a_plain_model(decoder, tmp_path):
    saved = train(config(decoder, tmp_path / "run", gradient_checkpointing=True, eval_dataset=str(EXAMPLES / "eval")))
    assert [r["step"] for r in log_records(tmp_path / "run") if "loss" in r] == [1, 2, 3, 4, 5]
    assert np.isfinite(losses(tmp_path / "run")).all()
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


def test_query_prompt_reaches_the_batches(decoder, tmp_path, monkeypatch):
    """In training the model is given every query with `query_prompt` in front, or the line's own `prompt_for_query`
    where it has one; the documents without: the token ids of the batches, read back as text."""
    from embed_nb.model import Embedding

    lines = [json.loads(line) for line in (EXAMPLES / "hard_neg.jsonl").read_text().splitlines()[:16]]
    for i, line in enumerate(lines):
        line["pos"] = line["pos"][:1]  # one row a line: 2 steps of 8 rows are the whole file
        if i % 2:
            line["prompt_for_query"] = "Represent this question: "
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batches, forward = [], Embedding.forward

    def recording(self, batch):
        batches.append({side: (batch[side]["input_ids"], batch[side]["attention_mask"]) for side in ("query", "docs")})
        return forward(self, batch)

    monkeypatch.setattr(Embedding, "forward", recording)
    train(config(decoder, tmp_path / "run", train_dataset=str(data), max_steps=2))
    tok = Embedding.from_pretrained(decoder).tokenizer
    texts = lambda side: [
        tok.decode(ids[mask.bool()], skip_special_tokens=True) for b in batches for ids, mask in zip(*b[side])
    ]
    assert len(batches) == 2
    assert sorted(texts("query")) == sorted(line.get("prompt_for_query", PROMPT) + line["query"] for line in lines)
    assert set(texts("docs")) <= {d for line in lines for d in line["pos"] + line["neg"]}


def test_bad_lora_target_is_one_line(decoder, tmp_path):
    from embed_nb.core import ConfigError

    with pytest.raises(ConfigError, match=r"lora: target_modules \['query'\] are not in the model"):
        train(config(decoder, tmp_path / "bad", lora={"r": 4, "target_modules": ["query"]}))


@pytest.mark.parametrize(
    "strategy",
    [
        "ddp",
        "fsdp",
        pytest.param("deepspeed1", marks=needs_deepspeed),
        pytest.param("deepspeed2", marks=needs_deepspeed),
    ],
)
def test_two_processes_equal_one(decoder, tmp_path, strategy):
    zero_stage = int(strategy[-1]) if strategy.startswith("deepspeed") else 2
    strategy = strategy.rstrip("12")
    train(config(decoder, tmp_path / "single"))
    launch(
        config(decoder, tmp_path / "multi", batch_size=4), num_processes=2, strategy=strategy, zero_stage=zero_stage
    )
    assert json.loads((tmp_path / "multi" / "run.json").read_text())["world_size"] == 2
    assert_same_run(tmp_path / "single", tmp_path / "multi")
    assert max_change(weights(decoder), weights(tmp_path / "multi" / "model")) > 1e-4  # the adapters learned


@pytest.mark.xdist_group("fixed_port")  # accelerate launch
def test_spec_fsdp_yaml_on_a_decoder_names_the_layer_key(decoder, tmp_path):
    "The spec's FSDP yaml wraps BertLayer; a Qwen2 decoder has none: one line naming the key and the model's layer."
    cfg = write_yaml(tmp_path / "c.yaml", config(decoder, tmp_path / "out", max_steps=2))
    r = accelerate_launch(EXAMPLES / "accelerate" / "default_fsdp.yaml", cfg, "--num_processes", 1)
    # the process exits 2 with one line; accelerate's launcher (torch elastic) then adds its own report and exits 1
    assert r.returncode != 0 and "(exitcode: 2)" in r.stderr, r.stderr[-3000:]
    first = r.stderr.split("embed-nb: error: ", 1)[1].splitlines()[0]
    assert first.startswith("fsdp_transformer_layer_cls_to_wrap: BertLayer is not a layer of")
    assert "its layer class is Qwen2DecoderLayer" in first
    assert not (tmp_path / "out").exists()
