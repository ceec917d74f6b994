"""Hard-negative mining on InsuranceQA: what it costs and what it buys.

Three fine-tunings of the embedded all-MiniLM-L6-v2 at the same budget (steps, batch, lr, seed, Matryoshka dims), each a
fresh process: in-batch negatives only ({query, pos}); the dataset's own negatives (each train question's candidate
pool, 3 sampled per query per epoch); negatives mined by `embed_nb.mine.mine_hard_negatives` with the base model from a
corpus of the train answers and their pool answers (ranks 10-100, margin 0.95, 3 per query). Then nDCG@10 / Recall@10
on InsuranceQA valid (never test) at each Matryoshka dimension. Mining speed: documents and queries embedded per second
and the mining process's peak resident memory.

    .venv/bin/python bench/mining.py --steps 40 --queries 1280         # CPU, ~30 min on 2 cores
"""
import argparse, json, random, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, insuranceqa, markdown_table, peak_rss_mib, run_worker, save  # noqa: E402
from quality import valid_data  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--corpus-file", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def mine_worker(a) -> dict:
    "Mine in this (fresh) process: its time and peak memory are the mining's."
    from embed_nb.mine import mine_hard_negatives

    start = time.perf_counter()
    report = mine_hard_negatives(None, a.data, a.out, corpus=a.corpus_file, num_negatives=a.neg_nums, rank_range=(10, 100),
                                 margin=0.95, seed=a.seed)
    texts = report.queries + report.skipped + sum(1 for _ in open(a.corpus_file))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts": texts, "texts_per_s": texts / seconds, "peak_rss_mib": peak_rss_mib(),
            "queries": report.queries, "skipped": report.skipped, "dropped": report.dropped, "negatives": report.negatives}


def train_worker(a) -> dict:
    from embed_nb.train import train

    dims = [int(d) for d in a.mrl.split(",") if d.strip()]
    start = time.perf_counter()
    train(dict(train_dataset=a.data, output_dir=a.out, batch_size=a.batch_size, max_steps=a.steps, epochs=1000, log_interval=10,
               lr=a.lr, temperature=a.temperature, neg_nums=a.neg_nums, query_max_len=a.max_seq_length,
               passage_max_len=a.max_seq_length, seed=a.seed, save_on_epoch_end=False, use_mrl=True, mrl_dims=dims))
    return {"model": str(Path(a.out) / "model"), "train_s": time.perf_counter() - start}


def main(argv=None):
    a = parse(argv)
    if a.worker:
        print(json.dumps(mine_worker(a) if a.worker == "mine" else train_worker(a)))
        return
    from embed_nb.evaluate import evaluate
    from embed_nb.model import Embedding

    questions, pool = insuranceqa("train")
    rng = random.Random(a.seed)
    chosen = rng.sample(questions, a.queries)
    tmp = Path(tempfile.mkdtemp(prefix="iqa_mine_"))
    files = {"in-batch only": tmp / "pairs.jsonl", "dataset negatives": tmp / "dataset_neg.jsonl", "mined negatives": tmp / "mined.jsonl"}
    with open(files["in-batch only"], "w") as p, open(files["dataset negatives"], "w") as d:
        for q in chosen:
            pos = [pool[q["answers"][0]]]
            p.write(json.dumps({"query": q["query"], "pos": pos}) + "\n")
            negs = [pool[n] for n in q["negatives"] if n not in q["answers"]][:50]
            d.write(json.dumps({"query": q["query"], "pos": pos, "neg": negs}) + "\n")
    docs = list(dict.fromkeys([pool[q["answers"][0]] for q in chosen] + [pool[n] for q in chosen for n in q["negatives"]]))[: a.corpus]
    with open(tmp / "corpus.jsonl", "w") as f:
        for t in docs:
            f.write(json.dumps({"text": t}) + "\n")
    common = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
              if k in ("steps", "batch_size", "neg_nums", "lr", "temperature", "mrl", "max_seq_length", "seed")]
    mining = run_worker(Path(__file__), ["--worker=mine", f"--data={files['in-batch only']}", f"--out={files['mined negatives']}",
                                         f"--corpus-file={tmp / 'corpus.jsonl'}", *common])
    print(f"mined: {mining}", file=sys.stderr, flush=True)
    valid = valid_data(a.valid_queries, a.valid_corpus, a.seed)
    dims = [int(d) for d in a.mrl.split(",")]
    models, training = {"base model": None}, {}
    for name, path in files.items():
        training[name] = run_worker(Path(__file__), ["--worker=train", f"--data={path}", f"--out={tmp / path.stem}", *common], timeout=6 * 3600)
        models[name] = training[name]["model"]
        print(f"trained {name} in {training[name]['train_s']:.0f} s", file=sys.stderr, flush=True)
    metrics = {n: {str(d): m for d, m in evaluate(Embedding.from_pretrained(p), valid, dims=dims, ks=[10], batch_size=64).items()}
               for n, p in models.items()}
    rows = [[d, n, metrics[n][str(d)]["ndcg@10"], metrics[n][str(d)]["recall@10"]] for d in dims for n in models]
    result = {"benchmark": "mining", "argv": sys.argv[1:], "settings": {k: v for k, v in vars(a).items() if k not in ("worker", "data", "out", "corpus_file")},
              "environment": environment("cpu"), "corpus": len(docs), "mining": mining, "training": training, "metrics": metrics,
              "valid": {"queries": len(valid.queries), "corpus": len(valid.corpus)}}
    print(f"\n{result['environment']['device']}: {a.steps} steps of batch {a.batch_size}, {a.neg_nums} negatives a query where the "
          f"data has them; InsuranceQA valid: {len(valid.queries)} questions, {len(valid.corpus)} answers\n")
    print(markdown_table(["dim", "training data", "nDCG@10", "Recall@10"], rows))
    print(f"\nmining: {mining['texts']} texts embedded in {mining['seconds']:.0f} s ({mining['texts_per_s']:.0f}/s), "
          f"peak RSS {mining['peak_rss_mib']:.0f} MiB; {mining['queries']} queries kept, {mining['dropped']} candidates dropped")
    print("wrote", save(a.name, result))


if __name__ == "__main__":
    main()
