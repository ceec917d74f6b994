"""Scale: training rows held on disk, and mining many documents (`--what rows` or `--what mining`).

**Rows** (`--what rows --rows 10000,100000,1000000`): a 2-step training run of a tiny random model on synthetic
hard-negative rows (a 10-word query, its own 40-word positive, 2 negatives drawn from the other positives), in a fresh
process each: reading the rows into memory (`data_on_disk: false`; up to --memory-up-to rows), from a store on disk
built by that run (`data_on_disk: true`, first run: the build included), and from the store a previous run built; one
process, and two (`launch(..., num_processes=2)`: the data is read in the launching process, then each training
process maps the store or gets the rows). Per run: the time from the process's start to the end of step 1, the whole
process, and the peak resident memory of a training process (with two: the larger of the two). The model is tiny so
that what is measured is the data's cost, not the steps'.

**Mining**: hard-negative mining of --queries queries against 100,000 and 1,000,000 documents, from vectors
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
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, parser, peak_rss_mib, report, run_worker, save

CONTENDERS = ["embed_nb_exact", "embed_nb_ivf", "st_faiss"]


def parse(argv=None):
    p = parser(__doc__, "worker", "data", "out")
    p.add_argument("--what", default="mining", choices=["mining", "rows"])
    p.add_argument("--rows", default="10000,100000,1000000", help="training rows (--what rows), a comma list")
    p.add_argument(
        "--memory-up-to", type=int, default=100_000, help="rows up to which the in-memory runs are made too"
    )
    p.add_argument(
        "--reuse",
        default="",
        help="--what rows: folders of an earlier run (a comma list, one per --rows size) whose rows, model and store to use",
    )
    p.add_argument("--kinds", default="memory,disk_build,disk,memory_2p,disk_2p", help="--what rows: the runs to make")
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


WORDS = "policy cover claim premium annuity insurer term life health auto home rider benefit deductible payout".split()


def make_rows(path: Path, n: int, seed: int = 0):
    "`n` synthetic hard-negative rows: a 10-word query, its own 40-word positive, 2 negatives from the other positives."
    rng = np.random.default_rng(seed)
    words = np.array([f"{w}{i}" for w in WORDS for i in range(40)])  # 600 words: the tiny model's vocabulary
    with open(path, "w") as f:
        for s in range(0, n, 10_000):
            m = min(10_000, n - s)
            q, d = rng.choice(words, (m, 10)), rng.choice(words, (m, 40))
            for i in range(m):
                negs = rng.integers(0, m, 2)
                f.write(
                    json.dumps(
                        {"query": " ".join(q[i]), "pos": [" ".join(d[i])], "neg": [" ".join(d[j]) for j in negs]}
                    )
                    + "\n"
                )
    return words


def process_age() -> float:
    "Seconds since this process started (Linux: its start time in /proc, against the uptime)."
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - start


def anon_mib(pid="self") -> float:
    "A process's private resident memory (RssAnon: its heap, not the pages of mapped files, which are shared)."
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def children(pid) -> list:
    "The processes under `pid` (Linux /proc)."
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        out += kids + [g for k in kids for g in children(k)]
    return out


def rows_worker(a) -> dict:
    import threading

    from embed_nb.train import train

    first, peak = [], [0.0, 0.0]

    def sample():  # the peaks of the private memory of this process and of its largest child, every 20 ms
        while True:
            peak[0] = max(peak[0], anon_mib())
            peak[1] = max([peak[1]] + [anon_mib(k) for k in children(os.getpid())])
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    cfg = dict(
        model_name_or_path=str(Path(a.data).parent / "tiny" / "model"),
        train_dataset=a.data,
        output_dir=a.out,
        overwrite_output_dir=True,
        batch_size=32,
        neg_nums=2,
        max_steps=2,
        log_interval=1,
        query_max_len=32,
        passage_max_len=64,
        save_on_epoch_end=False,
        data_on_disk=not a.worker.startswith("memory"),
        data_cache_dir=str(Path(a.data).parent / "store"),
    )
    if not a.worker.endswith("_2p"):
        train(cfg, callbacks=[lambda rec: first.append(process_age())])
        return {
            "first_step_s": first[0],
            "peak_rss_mib": peak_rss_mib(),
            "peak_anon_mib": peak[0],
            "end_s": process_age(),
        }
    import resource

    from embed_nb.train import launch

    def watch():  # the first log record of the launched processes
        log = Path(a.out) / "log.jsonl"
        while not first:
            if log.is_file() and '"step"' in log.read_text():
                first.append(process_age())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    launch(cfg, num_processes=2, strategy="ddp")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest launched process
    return {
        "first_step_s": first[0],
        "peak_rss_mib": largest,
        "peak_anon_mib": peak[1],
        "parent_rss_mib": peak_rss_mib(),
        "parent_anon_mib": peak[0],
        "end_s": process_age(),
    }


def rows_main(a):
    from embed_nb.model import make_tiny_model

    results, table, folders = {}, [], {}
    reuse = a.reuse.split(",") if a.reuse else []
    sizes = [int(x) for x in a.rows.split(",")]
    for s, n in enumerate(sizes):
        if reuse:  # rows, model and store made by an earlier run
            folders[n] = Path(reuse[s])
            continue
        folders[n] = folder = Path(tempfile.mkdtemp(prefix=f"scale_rows_{n}_"))
        t = time.perf_counter()
        words = make_rows(folder / "rows.jsonl", n, a.seed)
        make_tiny_model(folder / "tiny", [" ".join(words)], hidden=32)
        size = (folder / "rows.jsonl").stat().st_size
        print(f"{n:,} rows ({size / 2**20:.0f} MiB) made in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    kinds = a.kinds.split(",")
    for _ in range(a.rounds):  # rounds outermost: every size and kind meets the same changes in the machine's load
        for n, folder in folders.items():
            for c in [k for k in kinds if n <= a.memory_up_to or not k.startswith("memory")]:
                if c == "disk_build":  # no store: this run builds it
                    shutil.rmtree(folder / "store", ignore_errors=True)
                res = run_worker(
                    Path(__file__),
                    [f"--worker={c}", f"--data={folder / 'rows.jsonl'}", f"--out={folder / c}", "--what=rows"],
                    timeout=4 * 3600,
                )
                results.setdefault(str(n), {}).setdefault(c, []).append(res)
                print(
                    f"{n:,} {c}: step 1 at {res['first_step_s']:.1f} s, {res['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    for n in folders:
        for c, runs in results[str(n)].items():
            table.append(
                [
                    f"{n:,}",
                    c,
                    float(np.median([r["first_step_s"] for r in runs])),
                    float(np.median([r["end_s"] for r in runs])),
                    max(r["peak_rss_mib"] for r in runs),
                    max(r["peak_anon_mib"] for r in runs),
                ]
            )
    print(
        markdown_table(
            ["rows", "contender", "start to step 1, s", "process, s", "peak RSS MiB", "peak private MiB"], table
        )
    )
    print("wrote", save(a.name, report("scale_rows", a, results=results)))


def main(argv=None):
    a = parse(argv)
    if a.worker and a.what == "rows":
        print(json.dumps(rows_worker(a)))
        return
    if a.what == "rows":
        return rows_main(a)
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
