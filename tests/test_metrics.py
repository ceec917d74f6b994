"""Our IR metrics against trec_eval's (pytrec_eval) on a real-size random run with graded judgements."""

import numpy as np
import pytest
from embed_nb.evaluate import retrieval_metrics, search

pytrec_eval = pytest.importorskip("pytrec_eval")


def test_metrics_match_trec_eval():
    rng = np.random.default_rng(0)
    n_queries, n_docs, k = 500, 2000, 10
    qrels = {}
    for q in range(n_queries):
        rel = rng.choice(n_docs, size=rng.integers(1, 6), replace=False)
        qrels[f"q{q}"] = {f"d{d}": int(rng.integers(1, 4)) for d in rel}
    # a run that finds relevant documents often enough for every metric to be far from 0 and 1
    scores = rng.random((n_queries, n_docs))
    for q, judged in qrels.items():
        for d in judged:
            if rng.random() < 0.6:
                scores[int(q[1:]), int(d[1:])] += rng.random()
    order = np.argsort(-scores, axis=1)[:, :100]
    run = {f"q{q}": [f"d{d}" for d in order[q]] for q in range(n_queries)}
    ours = retrieval_metrics(run, qrels, ks=[k])
    trec_run = {q: {d: float(scores[int(q[1:]), int(d[1:])]) for d in docs} for q, docs in run.items()}
    cut = {
        q: dict(list(sorted(r.items(), key=lambda x: -x[1]))[:k]) for q, r in trec_run.items()
    }  # MRR@k: the top k only
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_10", "map_cut_10"})
    res = ev.evaluate(trec_run)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    mean = lambda name, r: float(np.mean([v[name] for v in r.values()]))
    assert ours["ndcg@10"] == pytest.approx(mean("ndcg_cut_10", res), abs=1e-9)
    assert ours["recall@10"] == pytest.approx(mean("recall_10", res), abs=1e-9)
    assert ours["map@10"] == pytest.approx(mean("map_cut_10", res), abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(mean("recip_rank", mrr), abs=1e-9)
    assert 0.05 < ours["ndcg@10"] < 0.95


def test_chunked_search_equals_full_search_on_a_large_corpus():
    "A 20k-document corpus searched in small blocks gives the exact top-k of the full similarity matrix."
    rng = np.random.default_rng(1)
    q, d = rng.standard_normal((64, 48)).astype(np.float32), rng.standard_normal((20000, 48)).astype(np.float32)
    s, i = search(q, d, k=10, dim=32, query_block=16, doc_block=3000)
    qn, dn = (
        q[:, :32] / np.linalg.norm(q[:, :32], axis=1, keepdims=True),
        d[:, :32] / np.linalg.norm(d[:, :32], axis=1, keepdims=True),
    )
    full = qn @ dn.T
    assert (i == np.argsort(-full, axis=1)[:, :10]).all()


SEARCH_100K = """
import resource, sys, numpy as np
from embed_nb.evaluate import search
rng = np.random.default_rng(0)
docs = rng.standard_normal((100_000, 384), dtype=np.float32)   # a 100k-document corpus at full width: 154 MB
queries = rng.standard_normal((5_000, 384), dtype=np.float32)  # all scores at once would be 5000 x 100k x 4 B = 2 GB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for dim in (384, 64):
    scores, idx = search(queries, docs, k=100, dim=dim)
    assert idx.shape == (5_000, 100)
    j = 17  # spot-check one query against the exact ranking
    d = docs[:, :dim] / np.linalg.norm(docs[:, :dim], axis=1, keepdims=True)
    q = queries[j, :dim] / np.linalg.norm(queries[j, :dim])
    assert (idx[j] == np.argsort(-(d @ q))[:100]).all()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, base * 1024)
"""


def test_search_100k_documents_in_bounded_memory():
    "Exact top-100 over 100k documents for 5k queries at two MRL dimensions, in a fresh process: peak RSS under 2 GB."
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", SEARCH_100K], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    peak, before_search = map(int, r.stdout.split())
    assert peak < 2 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
    print(f"peak RSS {peak / 2**20:.0f} MiB (of which {before_search / 2**20:.0f} MiB before searching)")
