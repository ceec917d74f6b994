"""Hard-negative mining on InsuranceQA: what it costs and what it buys.

Fine-tunings (`--arms`, of `ARMS`) of the embedded all-MiniLM-L6-v2 at the same budget (steps, batch, lr, seed,
Matryoshka dims) with embed_nb's default loss (false-negative mask on), each a fresh process: in-batch negatives only
({query, pos}); the dataset's own negatives (each train question's candidate pool, 3 sampled per query per epoch);
negatives mined by `embed_nb.mine.mine_hard_negatives` with the base model from a corpus of the train answers and their
pool answers (its defaults but ranks 10-100, margin 0.95, 3 per query; a query left without a candidate stays, as a
pair line); the same mined negatives with the mask applied to them too (`mask_hard_negatives`), or with the other
queries' positives as negatives too (`other_positives`), or one negative a query. Then nDCG@10 / Recall@10
on InsuranceQA valid (never test) at each Matryoshka dimension. Mining speed: documents and queries embedded per second
and the mining process's peak resident memory.

    .venv/bin/python bench/mining.py --steps 40 --queries 1280         # CPU, ~45 min on 2 cores
"""

import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import embed_nb_config, insuranceqa, markdown_table, mrl_dims, parser, passthrough, peak_rss_mib, report
from common import run_worker, save
from quality import valid_data


ARMS = {  # fine-tuning → (its data file's stem, what it adds to the config)
    "in-batch only": ("pairs", {}),
    "dataset negatives": ("dataset_neg", {}),
    "mined negatives": ("mined", {}),
    "mined negatives + mask": ("mined", {"mask_hard_negatives": True}),
    # the other queries' positives as negatives too (embed_nb leaves them out beside hard negatives, as the original)
    "mined negatives + other positives": ("mined", {"other_positives": True}),
    "one mined negative + other positives": ("mined", {"other_positives": True, "neg_nums": 1}),
}


def parse(argv=None):
    p = parser(__doc__, "worker", "data", "out", "corpus_file", "options")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--neg-nums", type=int, default=3)
    p.add_argument("--queries", type=int, default=1280, help="train questions (one positive each)")
    p.add_argument("--corpus", type=int, default=8000, help="documents mined from (train answers, then pool answers)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--mrl", default="64,128,256,384")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--valid-queries", type=int, default=500)
    p.add_argument("--valid-corpus", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="mining_cpu")
    p.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated fine-tunings to run, of: {', '.join(ARMS)}"
    )
    p.add_argument(
        "--trained-in",
        default=None,
        help="the folder of a run of these --arms stopped before its end: evaluate the arms it trained (arm0, arm1, "
        "...) instead of mining and training again",
    )
    p.add_argument("--mining", default=None, help="with --trained-in: that run's 'mined:' line (JSON), to record")
    return p.parse_args(argv)


def mine_worker(a) -> dict:
    "Mine in this (fresh) process: its time and peak memory are the mining's."
    from embed_nb.mine import mine_hard_negatives

    start = time.perf_counter()
    mined = mine_hard_negatives(
        None,
        a.data,
        a.out,
        corpus=a.corpus_file,
        num_negatives=a.neg_nums,
        rank_range=(10, 100),
        margin=0.95,
        seed=a.seed,
    )
    texts = mined.queries + mined.skipped + sum(1 for _ in open(a.corpus_file))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "texts": texts,
        "texts_per_s": texts / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "queries": mined.queries,
        "skipped": mined.skipped,
        "dropped": mined.dropped,
        "negatives": mined.negatives,
    }


def train_worker(a) -> dict:
    from embed_nb.train import train

    options = dict(output_dir=a.out, max_steps=a.steps, epochs=1000, log_interval=10, neg_nums=a.neg_nums)
    options.update(json.loads(a.options or "{}"))  # the arm's settings
    start = time.perf_counter()
    train(embed_nb_config(a, mrl_dims(a.mrl), **options))  # as quality.py's embed_nb, with negatives
    return {"model": str(Path(a.out) / "model"), "train_s": time.perf_counter() - start}


def main(argv=None):
    a = parse(argv)
    if a.worker:
        print(json.dumps(mine_worker(a) if a.worker == "mine" else train_worker(a)))
        return
    if a.trained_in:
        return evaluate_only(a)
    questions, pool = insuranceqa("train")
    rng = random.Random(a.seed)
    chosen = rng.sample(questions, a.queries)
    tmp = Path(tempfile.mkdtemp(prefix="iqa_mine_"))
    files = {
        "in-batch only": tmp / "pairs.jsonl",
        "dataset negatives": tmp / "dataset_neg.jsonl",
        "mined negatives": tmp / "mined.jsonl",
    }
    with open(files["in-batch only"], "w") as p, open(files["dataset negatives"], "w") as d:
        for q in chosen:
            pos = [pool[q["answers"][0]]]
            p.write(json.dumps({"query": q["query"], "pos": pos}) + "\n")
            negs = [pool[n] for n in q["negatives"] if n not in q["answers"]][:50]
            d.write(json.dumps({"query": q["query"], "pos": pos, "neg": negs}) + "\n")
    docs = list(
        dict.fromkeys([pool[q["answers"][0]] for q in chosen] + [pool[n] for q in chosen for n in q["negatives"]])
    )[: a.corpus]
    with open(tmp / "corpus.jsonl", "w") as f:
        for t in docs:
            f.write(json.dumps({"text": t}) + "\n")
    common = passthrough(a, "steps", "batch_size", "neg_nums", "lr", "temperature", "mrl", "max_seq_length", "seed")
    mining = run_worker(
        Path(__file__),
        [
            "--worker=mine",
            f"--data={files['in-batch only']}",
            f"--out={files['mined negatives']}",
            f"--corpus-file={tmp / 'corpus.jsonl'}",
            *common,
        ],
    )
    print(f"mined: {mining}", file=sys.stderr, flush=True)
    valid = valid_data(a.valid_queries, a.valid_corpus, a.seed)
    models, training = {"base model": None}, {}
    for i, name in enumerate(n.strip() for n in a.arms.split(",")):
        if name not in ARMS:
            raise SystemExit(f"--arms: {name!r} is not one of {', '.join(ARMS)}")
        path, extra = tmp / f"{ARMS[name][0]}.jsonl", [f"--options={json.dumps(ARMS[name][1])}"]
        training[name] = run_worker(
            Path(__file__),
            ["--worker=train", f"--data={path}", f"--out={tmp / f'arm{i}'}", *common, *extra],
            timeout=6 * 3600,
        )
        models[name] = training[name]["model"]
        print(f"trained {name} in {training[name]['train_s']:.0f} s", file=sys.stderr, flush=True)
    finish(a, models, training, mining, len(docs), valid)


def evaluate_only(a):
    "Evaluate the arms a stopped run trained (`--trained-in`), with the same valid set."
    arms = [n.strip() for n in a.arms.split(",")]
    models = {"base model": None}
    models |= {n: str(Path(a.trained_in) / f"arm{i}" / "model") for i, n in enumerate(arms)}
    models = {n: p for n, p in models.items() if p is None or (Path(p) / "modules.json").is_file()}
    print(f"evaluating {', '.join(models)} from {a.trained_in}", file=sys.stderr, flush=True)
    corpus = sum(1 for _ in open(Path(a.trained_in) / "corpus.jsonl"))
    mining = json.loads(a.mining) if a.mining else None
    finish(a, models, {}, mining, corpus, valid_data(a.valid_queries, a.valid_corpus, a.seed))


def finish(a, models, training, mining, corpus, valid):
    from embed_nb.evaluate import evaluate
    from embed_nb.model import Embedding

    dims = mrl_dims(a.mrl)
    metrics = {
        n: {
            str(d): m
            for d, m in evaluate(Embedding.from_pretrained(p), valid, dims=dims, ks=[10], batch_size=64).items()
        }
        for n, p in models.items()
    }
    rows = [[d, n, metrics[n][str(d)]["ndcg@10"], metrics[n][str(d)]["recall@10"]] for d in dims for n in models]
    valid_size = {"queries": len(valid.queries), "corpus": len(valid.corpus)}
    result = report("mining", a, corpus=corpus, mining=mining, training=training, metrics=metrics, valid=valid_size)
    print(
        f"\n{result['environment']['device']}: {a.steps} steps of batch {a.batch_size}, "
        f"{a.neg_nums} negatives a query where the data has them; "
        f"InsuranceQA valid: {len(valid.queries)} questions, {len(valid.corpus)} answers\n"
    )
    print(markdown_table(["dim", "training data", "nDCG@10", "Recall@10"], rows))
    if mining:
        print(
            f"\nmining: {mining['texts']} texts embedded in {mining['seconds']:.0f} s ({mining['texts_per_s']:.0f}/s), "
            f"peak RSS {mining['peak_rss_mib']:.0f} MiB; {mining['queries']} queries kept, "
            f"{mining['dropped']} candidates dropped"
        )
    print("wrote", save(a.name, result))


if __name__ == "__main__":
    main()
