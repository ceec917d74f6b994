"""Mining at scale: hard-negative mining of --queries queries against 100,000 and 1,000,000 documents, from vectors
computed beforehand, so that the search and what mining does around it are what is timed, not an encoder.

Contenders, each in a fresh process, on the same vectors and texts: embed_nb's `mine_hard_negatives` with exact search
(`search_index="exact"`) and with a FAISS IVF index (`"ivf"`, the default past 200,000 documents), and
sentence-transformers' `mine_hard_negatives` with `use_faiss=True` (exact `IndexFlatIP`; its other path builds a
queries-block × corpus similarity matrix: 16,384 × 1M floats, 65 GB, at 1M documents). The vectors reach
sentence-transformers through its own embedding cache (`cache_folder`), embed_nb's through an encoder that looks them up:
neither encodes anything. Same task for both: 7 negatives a query, sampled at random from ranks 10-100 (positives left
out), dropping candidates above 0.95 × the positive's score.

The vectors are synthetic (no 1M-document corpus installs offline): unit vectors around one random centre per --per-centre
documents (clustered, as embeddings are), each query near one document, which is its positive. Per contender: the mining call's
wall time (embed_nb's includes reading its jsonl files; sentence-transformers' dataset is built before the call), the
process's peak resident memory (the vectors included: 1.5 GB at 1M × 384 float32), and for the IVF index its recall@k
against exact search on 256 queries (measured inside the call).

    .venv/bin/python bench/scale.py --docs 100000,1000000 --queries 10000
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, parser, peak_rss_mib, report, run_worker, save

CONTENDERS = ["embed_nb_exact", "embed_nb_ivf", "st_faiss"]


def parse(argv=None):
    p = parser(__doc__, "worker", "data")
    p.add_argument("--docs", default="100000,1000000", help="corpus sizes, a comma list")
    p.add_argument("--queries", type=int, default=10000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument(
        "--per-centre", type=int, default=500, help="documents a cluster centre, on average (clustered data)"
    )
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--rounds", type=int, default=1, help="runs of each contender per size (alternating)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="scale_mining_cpu")
    return p.parse_args(argv)


def make_data(folder: Path, n_docs: int, n_queries: int, dim: int, centres: int, seed: int):
    "Unit document and query vectors (float32 .npy), pairs.jsonl ({query, pos}) and corpus.jsonl ({text}) in `folder`."
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    docs = np.empty((n_docs, dim), dtype=np.float32)
    for s in range(0, n_docs, 100_000):  # in chunks: the temporary arrays stay small
        part = c[rng.integers(0, centres, min(100_000, n_docs - s))]
        part += 1.0 * rng.standard_normal(part.shape, dtype=np.float32)
        docs[s : s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    pos = rng.choice(n_docs, n_queries, replace=False)
    q = docs[pos] + 0.05 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.save(folder / "docs.npy", docs)
    np.save(folder / "queries.npy", q)
    with open(folder / "corpus.jsonl", "w") as f:
        f.writelines(f'{{"text": "d{j}"}}\n' for j in range(n_docs))
    with open(folder / "pairs.jsonl", "w") as f:
        f.writelines(f'{{"query": "q{i}", "pos": ["d{j}"]}}\n' for i, j in enumerate(pos))
    # sentence-transformers' embedding cache, named as it names it (model name "", no prompts): the same files
    key = lambda texts: hashlib.sha256(repr(("", None, None, texts)).encode(), usedforsecurity=False).hexdigest()
    (folder / "st_cache").mkdir()
    os.link(
        folder / "queries.npy",
        folder / "st_cache" / f"query_embeddings_{key([f'q{i}' for i in range(n_queries)])}.npy",
    )
    os.link(
        folder / "docs.npy", folder / "st_cache" / f"corpus_embeddings_{key([f'd{j}' for j in range(n_docs)])}.npy"
    )


class Lookup:
    "An encoder that returns the vectors computed beforehand for its texts (q<i>: queries, d<j>: documents)."

    def __init__(self, folder: Path):
        self.q = np.load(folder / "queries.npy", mmap_mode="r")
        self.d = np.load(folder / "docs.npy", mmap_mode="r")

    def encode(self, texts, batch_size=None, **kw):
        return np.stack([(self.q if t[0] == "q" else self.d)[int(t[1:])] for t in texts])


def embed_nb_worker(a, index: str) -> dict:
    from embed_nb.mine import mine_hard_negatives

    folder = Path(a.data)
    enc = Lookup(folder)
    start = time.perf_counter()
    r = mine_hard_negatives(
        enc,
        folder / "pairs.jsonl",
        folder / f"mined_{index}.jsonl",
        corpus=folder / "corpus.jsonl",
        num_negatives=7,
        rank_range=(10, 100),
        margin=0.95,
        duplicate_score=None,
        search_index=index,
        batch_size=4096,
    )
    took = time.perf_counter() - start
    return {"mining_s": took, "peak_rss_mib": peak_rss_mib(), "recall": r.recall, "negatives": r.negatives}


def st_worker(a) -> dict:
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from embed_nb.model import make_tiny_model

    folder = Path(a.data)
    rows = [json.loads(line) for line in open(folder / "pairs.jsonl")]
    queries, positives = [r["query"] for r in rows], [r["pos"][0] for r in rows]
    corpus = [json.loads(line)["text"] for line in open(folder / "corpus.jsonl")]
    dim = int(np.load(folder / "queries.npy", mmap_mode="r").shape[1])
    model = SentenceTransformer(make_tiny_model(folder / "st_model", hidden=dim), device="cpu")  # never encodes here
    assert not model.model_card_data.base_model  # the name the cache files were keyed with: ""
    cache = folder / "st_cache"
    dataset = datasets.Dataset.from_dict({"query": queries, "positive": positives})
    start = time.perf_counter()
    out = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus,
        range_min=9,
        range_max=100,
        relative_margin=0.05,
        num_negatives=7,
        sampling_strategy="random",
        output_format="n-tuple",
        use_faiss=True,
        cache_folder=str(cache),
        verbose=False,
    )
    took = time.perf_counter() - start
    return {"mining_s": took, "peak_rss_mib": peak_rss_mib(), "recall": None, "rows": len(out)}


def main(argv=None):
    a = parse(argv)
    if a.worker:
        res = st_worker(a) if a.worker == "st_faiss" else embed_nb_worker(a, a.worker.removeprefix("embed_nb_"))
        print(json.dumps(res))
        return
    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    results, rows = {}, []
    for n in [int(x) for x in a.docs.split(",")]:
        folder = Path(tempfile.mkdtemp(prefix=f"scale_{n}_"))
        t = time.perf_counter()
        make_data(folder, n, a.queries, a.dim, max(1, n // a.per_centre), a.seed)
        print(f"{n:,} documents, {a.queries:,} queries made in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for r in range(a.rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            for c in order:
                res = run_worker(Path(__file__), [f"--worker={c}", f"--data={folder}"], timeout=4 * 3600)
                results.setdefault(str(n), {}).setdefault(c, []).append(res)
                print(
                    f"{n:,} {c}: {res['mining_s']:.1f} s, {res['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True
                )
        for c in contenders:
            runs = results[str(n)][c]
            s = float(np.median([x["mining_s"] for x in runs]))
            ref = float(np.median([x["mining_s"] for x in results[str(n)].get("st_faiss", runs)]))
            rec = runs[0]["recall"]
            rows.append([f"{n:,}", c, s, ref / s, max(x["peak_rss_mib"] for x in runs), "" if rec is None else rec])
    print(
        markdown_table(["documents", "contender", "mining s", "× sentence-transformers", "peak MiB", "recall@k"], rows)
    )
    print("wrote", save(a.name, report("scale_mining", a, results=results)))


if __name__ == "__main__":
    main()
