"""GradCache (`cached: true`) computes the loss and the gradients of the whole batch: equal to the plain computation
in one process (float64), with gradient accumulation, and across processes with cross-device negatives."""

import json

import pytest
import torch
from conftest import EXAMPLES, assert_same_run, example_texts, max_change, run_config, weights

from embed_nb.core import ConfigError, TrainConfig
from embed_nb.data import EmbeddingDataset, make_loader
from embed_nb.gradcache import _mini_batches, grad_cache
from embed_nb.losses import DistillLoss, InfoNCELoss, MatryoshkaLoss, ScoreKLLoss
from embed_nb.model import Embedding, make_tiny_model
from embed_nb.train import launch, train


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("drop"), example_texts(), hidden=32, dropout=0.3)


def batch_of(name, model, rows=10, neg_nums=3):
    vec = str(EXAMPLES / "distill_teacher.f32") if name == "distill" else None
    ds = EmbeddingDataset(EXAMPLES / f"{name}.jsonl", neg_nums=neg_nums, teacher_vectors=vec)
    return next(iter(make_loader(ds, model.tokenizer, TrainConfig(batch_size=rows, seed=3))))


def grads_of(net, fn):
    net.zero_grad()
    out = fn()
    return out, {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def backward(out: dict) -> dict:
    "Back-propagate a loss's output (`loss` and its parts); return it."
    out["loss"].backward()
    return out


def max_diff(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    return max((a[k] - b[k]).abs().max().item() for k in a)


LOSSES = {
    "pairs": lambda: InfoNCELoss(0.05),
    "hard_neg": lambda: MatryoshkaLoss(InfoNCELoss(0.05), [8, 16, 32]),
    "scored": lambda: ScoreKLLoss(0.05),
    "distill": lambda: MatryoshkaLoss(DistillLoss(), [16, 384]),
}


ALL = ("query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc")
# the contrastive loss's extras: data file, loss
RECIPES = {
    "all_directions_masked": ("pairs", lambda: InfoNCELoss(0.05, directions=ALL, margin=0.0, hardness=2.0)),
    "symmetric_hard_neg": (
        "hard_neg",
        lambda: MatryoshkaLoss(InfoNCELoss(0.05, directions=ALL[:2], partition="per_direction", margin=0.0), [8, 32]),
    ),
    "kl_plus_info_nce": ("scored", lambda: ScoreKLLoss(0.05, info_nce_weight=0.1)),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_equal_to_plain(recipe, tiny_model_no_dropout):
    "The contrastive loss's extras (directions, false-negative mask, hardness; KL + InfoNCE) through GradCache, float64."
    data, make = RECIPES[recipe]
    net = Embedding.from_pretrained(tiny_model_no_dropout, use_mrl=True, mrl_dims=[8, 32]).double()
    batch = batch_of(data, net)
    loss = make()
    ref, ref_grads = grads_of(net, lambda: backward(loss(net(batch), batch)))
    out, grads = grads_of(net, lambda: grad_cache(net, batch, loss, 3))
    assert abs(out["loss"].item() - ref["loss"].item()) <= 1e-10
    assert max_diff(grads, ref_grads) <= 1e-10


@pytest.mark.parametrize("name,mini", [(n, m) for n in LOSSES for m in (3, 7)] + [("pairs", 1)])
def test_equal_to_plain(name, mini, tiny_model_no_dropout):
    """Loss and every parameter gradient through GradCache equal the whole batch's (float64: only summation order
    differs)."""
    head = 384 if name == "distill" else None
    net = Embedding.from_pretrained(
        tiny_model_no_dropout, use_mrl=name in ("hard_neg", "distill"), mrl_dims=[8, 16, 32], head_dim=head
    ).double()
    batch = batch_of(name, net)
    if "teacher" in batch:
        batch["teacher"] = batch["teacher"].double()
    loss = LOSSES[name]()
    ref, ref_grads = grads_of(net, lambda: backward(loss(net(batch), batch)))
    out, grads = grads_of(net, lambda: grad_cache(net, batch, loss, mini))
    assert set(out) == set(ref)
    for k in ref:
        assert abs(out[k].item() - ref[k].item()) <= 1e-10, (k, out[k], ref[k])
    assert max_diff(grads, ref_grads) <= 1e-10


def test_float32_relative(tiny_model_no_dropout):
    "In float32 (as trained) the gradients agree within 1e-5 (relative to the largest entry where that is above 1)."
    net = Embedding.from_pretrained(tiny_model_no_dropout)
    batch, loss = batch_of("hard_neg", net, rows=16), InfoNCELoss(0.05)
    ref, ref_grads = grads_of(net, lambda: backward(loss(net(batch), batch)))
    out, grads = grads_of(net, lambda: grad_cache(net, batch, loss, 4))
    assert abs(out["loss"].item() - ref["loss"].item()) <= 1e-5
    for k in ref_grads:
        assert (grads[k] - ref_grads[k]).abs().max() <= 1e-5 * max(ref_grads[k].abs().max(), 1.0), k


def test_dropout_is_replayed(dropout_model):
    """With dropout on, the second pass draws the first pass's masks: GradCache equals the same mini-batches embedded
    with activations."""
    net = Embedding.from_pretrained(dropout_model).double().train()
    batch, loss = batch_of("hard_neg", net), InfoNCELoss(0.05)

    def chunked(seed):
        torch.manual_seed(seed)
        emb = {}
        for s in ("query", "docs"):  # the mini-batches GradCache embeds (rows by length), back in the batch's order
            parts, order = _mini_batches(batch[s], -(-len(batch[s]["input_ids"]) // 3))
            emb[s] = torch.cat([net({s: f})[s] for f, _ in parts])[torch.argsort(order)]
        return backward(loss(emb, batch))

    def cached(seed):
        torch.manual_seed(seed)
        return grad_cache(net, batch, loss, 3)

    (ref, ref_grads), (out, grads), (_, other) = (
        grads_of(net, lambda: chunked(5)),
        grads_of(net, lambda: cached(5)),
        grads_of(net, lambda: chunked(6)),
    )
    assert abs(out["loss"].item() - ref["loss"].item()) <= 1e-10
    assert max_diff(grads, ref_grads) <= 1e-10
    assert max_diff(other, ref_grads) > 1e-3  # another random state gives other gradients: dropout does act


def test_stand_in_rows():
    "Short of rows for the agreed number of mini-batches, a process embeds a stand-in row, flagged as such."
    feats = {"input_ids": torch.arange(6).view(2, 3), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    pieces, order = _mini_batches(feats, 3)
    assert [real for _, real in pieces] == [True, True, False] and order.tolist() == [0, 1]
    assert [f["input_ids"].tolist() for f, _ in pieces] == [[[0, 1, 2]], [[3, 4, 5]], [[3, 4, 5]]]


def test_mini_batches_by_length_cost_less_and_change_nothing(tiny_model_no_dropout):
    """A batch with one long text: mini-batches of rows by length are narrower than the batch, and GradCache's loss and
    gradients equal the plain step's (float64)."""
    net = Embedding.from_pretrained(tiny_model_no_dropout).double()
    texts = [f"question {i} " + "word " * (12 if i == 5 else i % 4) for i in range(12)]
    tok = lambda t: net.tokenizer(t, padding=True, truncation=True, max_length=64, return_tensors="pt")
    batch = {
        "query": dict(tok(texts)),
        "docs": dict(tok([t + " answer" for t in texts])),
        "doc_index": torch.arange(12).view(12, 1),
    }  # query i's positive is doc i
    pieces, order = _mini_batches(batch["query"], 4)
    widths = [f["input_ids"].shape[1] for f, _ in pieces]
    assert widths[0] == batch["query"]["input_ids"].shape[1] > 2 * max(widths[1:]), widths
    assert sorted(order.tolist()) == list(range(12)) and order[0] == 5
    loss = InfoNCELoss(0.05)
    ref, ref_grads = grads_of(net, lambda: backward(loss(net(batch), batch)))
    out, grads = grads_of(net, lambda: grad_cache(net, batch, loss, 3))
    assert abs(out["loss"].item() - ref["loss"].item()) <= 1e-10
    assert max_diff(grads, ref_grads) <= 1e-10


def cfg(model, name, out, **kw):
    return run_config(model, out, name, **{"max_steps": 4, **kw})


def test_train_cached_with_accumulation(tiny_model_no_dropout, tmp_path):
    "train(cached=True) with gradient accumulation and Matryoshka equals the plain run: losses and final weights."
    extra = dict(gradient_accumulation_steps=2, use_mrl=True, mrl_dims=[8, 32])
    train(cfg(tiny_model_no_dropout, "hard_neg", tmp_path / "plain", **extra))
    train(cfg(tiny_model_no_dropout, "hard_neg", tmp_path / "cached", cached=True, mini_batch_size=3, **extra))
    assert_same_run(tmp_path / "plain", tmp_path / "cached")
    assert max_change(weights(tiny_model_no_dropout), weights(tmp_path / "cached" / "model")) > 1e-3  # it trained


@pytest.mark.parametrize("strategy,name", [("ddp", "hard_neg"), ("ddp", "scored"), ("fsdp", "pairs")])
def test_two_processes_cached_equal_one_plain(strategy, name, tiny_model_no_dropout, tmp_path):
    "2 processes x 4 rows, cached in mini-batches of 3, cross-device negatives == 1 process x 8 rows, plain."
    extra = dict(use_mrl=True, mrl_dims=[8, 32]) if name == "hard_neg" else {}
    train(cfg(tiny_model_no_dropout, name, tmp_path / "single", **extra))
    launch(
        cfg(tiny_model_no_dropout, name, tmp_path / "multi", batch_size=4, cached=True, mini_batch_size=3, **extra),
        num_processes=2,
        strategy=strategy,
    )
    run = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert (run["world_size"], run["negatives_cross_device"], run["config"]["cached"]) == (2, True, True)
    assert_same_run(tmp_path / "single", tmp_path / "multi")


def test_cached_refused_with_deepspeed(tiny_model_no_dropout, tmp_path):
    with pytest.raises(ConfigError, match="DeepSpeed"):
        launch(
            cfg(tiny_model_no_dropout, "pairs", tmp_path / "ds", cached=True), num_processes=2, strategy="deepspeed"
        )
    assert not (tmp_path / "ds").exists()
