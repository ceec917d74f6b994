"""Queries that mining leaves without a hard negative stay in the data (as pair lines, trained on in-batch negatives), or
are left out when asked; a hard-negative file with such lines trains."""

import json

import numpy as np
from conftest import EXAMPLES, log_records, losses, run_config

from embed_nb.data import EmbeddingDataset, read_examples
from embed_nb.mine import mine_hard_negatives, mined_table
from embed_nb.train import train

VECTORS = {  # query A's positive is its own direction; query B's positive points away from it, so every candidate
    "query A": [1.0, 0.0],  # scores above 0.95 × B's positive score: the margin drops all of them
    "answer A": [1.0, 0.0],
    "query B": [0.0, 1.0],
    "answer B": [0.6, -0.8],
    "other": [0.0, 1.0],
}


class Encoder:
    "Fixed vectors of the texts above."

    def encode(self, texts, batch_size=None):
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mine(tmp_path, **kw):
    data = write(
        tmp_path / "pairs.jsonl",
        [{"query": "query A", "pos": ["answer A"], "id": 1}, {"query": "query B", "pos": ["answer B"], "id": 2}],
    )
    corpus = write(tmp_path / "corpus.jsonl", [{"text": t} for t in ("answer A", "answer B", "other")])
    out = tmp_path / "mined.jsonl"
    report = mine_hard_negatives(Encoder(), data, out, corpus=corpus, num_negatives=1, rank_range=(1, 2), **kw)
    return report, [json.loads(line) for line in open(out)]


def test_a_query_without_negatives_is_kept_as_a_pair(tmp_path):
    report, lines = mine(tmp_path)
    assert (report.queries, report.skipped, report.left_out) == (1, 1, False)
    assert [r["query"] for r in lines] == ["query A", "query B"]
    assert lines[0]["neg"] and "neg" not in lines[1] and lines[1]["id"] == 2  # other keys kept
    assert "1 of them with none (written without negatives: they train on in-batch negatives)" in str(report)
    assert read_examples(report.out)[0] == "hard_neg"
    table = mined_table(report)  # the inspection view lists the mined query only
    assert len(table) == 1 and table["negative"].tolist() == [lines[0]["neg"][0]]


def test_keep_all_false_leaves_them_out(tmp_path):
    report, lines = mine(tmp_path, keep_all=False)
    assert (report.queries, report.skipped, report.left_out) == (1, 1, True)
    assert [r["query"] for r in lines] == ["query A"] and "1 of them with none (left out)" in str(report)


def test_a_hard_negative_file_with_pair_lines_trains(tiny_model, tmp_path):
    "Half the lines have no negatives: every line is a training row, and the run's losses are finite."
    rows = [json.loads(line) for line in open(EXAMPLES / "hard_neg.jsonl")][:16]
    mixed = [r if i % 2 else {"query": r["query"], "pos": r["pos"]} for i, r in enumerate(rows)]
    data = write(tmp_path / "mixed.jsonl", mixed)
    ds = EmbeddingDataset(data, neg_nums=2)
    assert ds.format == "hard_neg" and len(ds) == sum(len(r["pos"]) for r in rows)
    assert {len(ds[i]["docs"]) for i in range(len(ds))} == {1, 3}
    out = tmp_path / "run"
    train(run_config(tiny_model, out, train_dataset=str(data), batch_size=8, max_steps=3, neg_nums=2))
    assert len(losses(out)) == 3 and np.isfinite(losses(out)).all()
    assert json.loads((out / "run.json").read_text())["data_format"] == "hard_neg"
    assert all(np.isfinite(r["loss"]) for r in log_records(out) if "loss" in r)
