"""Retrieval quality at an equal budget: embed_nb against sentence-transformers' trainer, and the base model.

Both fine-tune the embedded all-MiniLM-L6-v2 (max_seq_length 256) on the same InsuranceQA train pairs, for the same
number of steps, batch size, learning rate, schedule, temperature and seed, with Matryoshka dimensions (embed_nb's
InfoNCE in its MatryoshkaLoss, sentence-transformers' MultipleNegativesRankingLoss in its MatryoshkaLoss). Each is
evaluated, with the same code (embed_nb.evaluate: exact search), on InsuranceQA's valid split: --queries questions
drawn at random, against a corpus of their right answers plus answers from their candidate pools (InsuranceQA's
negatives) up to --corpus documents. The test split is never read. Reports nDCG@10, Recall@10 and MRR@10 at every
dimension.

    .venv/bin/python bench/quality.py --steps 60 --batch-size 32 --queries 500 --corpus 5000
"""

from __future__ import annotations
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EMBED_NB_OPTIONS, ST_LOSSES, embed_nb_config, mrl_dims, sentence_transformers_side
from common import ensure_requirements, insuranceqa, markdown_table, parser, passthrough, report, run_worker, save
from common import train_pairs, write_jsonl


def parse(argv=None):
    p = parser(__doc__, "worker", "data", "out", "tune_data")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--mrl", default="64,128,256,384")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--queries", type=int, default=500, help="valid questions evaluated")
    p.add_argument("--corpus", type=int, default=5000, help="documents searched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds", type=int, default=1, help="training seeds (seed, seed+1, ...): mean and spread per dimension"
    )
    p.add_argument(
        "--training-seeds", default=None, help="the training seeds, a comma list (default: seed .. seed + seeds - 1)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true")
    p.add_argument(
        "--contenders",
        default="embed_nb,sentence_transformers",
        help="any of common.EMBED_NB_OPTIONS (embed_nb's recipes and speed options) and common.ST_LOSSES "
        "(sentence-transformers' losses)",
    )
    p.add_argument("--name", default=None, help="results file name (default: quality_<device>)")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        help="NAME=FOLDER: a model trained before (by this script, same settings) evaluated beside the contenders",
    )
    return p.parse_args(argv)


def valid_data(n_queries: int, n_docs: int, seed: int):
    "RetrievalData of valid questions, their answers, and candidate-pool answers up to `n_docs` documents."
    from embed_nb.evaluate import RetrievalData

    questions, pool = insuranceqa("valid")
    rng = random.Random(seed)
    chosen = rng.sample(questions, min(n_queries, len(questions)))
    corpus = {a: pool[a] for q in chosen for a in q["answers"]}
    negatives = sorted({a for q in chosen for a in q["negatives"]} - set(corpus))
    rng.shuffle(negatives)
    for a in negatives[: max(0, n_docs - len(corpus))]:
        corpus[a] = pool[a]
    queries = {f"v{i}": q["query"] for i, q in enumerate(chosen)}
    qrels = {f"v{i}": {a: 1.0 for a in q["answers"]} for i, q in enumerate(chosen)}
    return RetrievalData(queries, corpus, qrels)


def tuning_data(exclude: set, n_queries: int, per_query: int, seed: int, path: Path) -> Path:
    """Valid questions not in `exclude` (the reported ones), as a jsonl file in the hard-negative format: each with its
    answers and `per_query` answers of its candidate pool; what `merge_base` chooses on (never the reported set)."""
    questions, pool = insuranceqa("valid")
    rest = [q for q in questions if q["query"] not in exclude]
    random.Random(seed + 1).shuffle(rest)
    with open(path, "w", encoding="utf-8") as f:
        for q in rest[:n_queries]:
            negs = [pool[a] for a in q["negatives"] if a not in q["answers"]][:per_query]
            f.write(json.dumps({"query": q["query"], "pos": [pool[a] for a in q["answers"]], "neg": negs}) + "\n")
    return path


def train_worker(a) -> dict:
    start = time.perf_counter()
    dims = mrl_dims(a.mrl)
    path = str(Path(a.out) / "model")
    if a.worker.startswith("embed_nb"):
        from embed_nb.train import train

        options = {k: a.tune_data if v == "TUNE" else v for k, v in EMBED_NB_OPTIONS[a.worker].items()}
        train(embed_nb_config(a, dims, output_dir=a.out, max_steps=a.steps, epochs=1000, log_interval=10, **options))
    else:
        model, make_trainer = sentence_transformers_side(a, dims, loss=ST_LOSSES[a.worker])
        make_trainer(a.steps, logging_steps=10).train()
        model.save(path)
    return {"contender": a.worker, "model": path, "train_s": time.perf_counter() - start}


def main(argv=None):
    a = parse(argv)
    if a.worker:
        print(json.dumps(train_worker(a)))
        return
    ensure_requirements()
    from embed_nb.evaluate import evaluate
    from embed_nb.model import Embedding

    dims = mrl_dims(a.mrl) or [384]
    pairs = train_pairs(a.steps * a.batch_size, a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="iqa_q_"))
    data = write_jsonl(pairs, tmp / "train_pairs.jsonl")
    worker_args = passthrough(a, "steps", "batch_size", "lr", "temperature", "mrl", "max_seq_length", "device", "bf16")
    valid = valid_data(a.queries, a.corpus, a.seed)
    tune = tuning_data(set(valid.queries.values()), 300, 5, a.seed, tmp / "tune.jsonl")
    print(f"valid: {valid}", file=sys.stderr)
    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    models, trained = {"base": None}, {}
    seeds = (
        [int(x) for x in a.training_seeds.split(",")] if a.training_seeds else list(range(a.seed, a.seed + a.seeds))
    )
    a.seeds = len(seeds)
    for s in seeds:  # the same pairs and valid set; the training seed changes
        for c in contenders:
            name = c if a.seeds == 1 else f"{c} seed {s}"
            res = run_worker(
                Path(__file__),
                [
                    f"--worker={c}",
                    f"--data={data}",
                    f"--out={tmp / name.replace(' ', '_')}",
                    f"--seed={s}",
                    f"--tune-data={tune}",
                    *worker_args,
                ],
                timeout=6 * 3600,
            )
            trained[name] = res
            models[name] = res["model"]
            print(f"trained {name} in {res['train_s']:.0f} s", file=sys.stderr, flush=True)
    for also in a.also:  # earlier trainings of the same pairs and seed: evaluated the same way
        name, _, path = also.partition("=")
        models[name] = path
    metrics = {}
    for c, path in models.items():
        t = time.perf_counter()
        model = Embedding.from_pretrained(path, device=a.device)
        metrics[c] = {str(d): m for d, m in evaluate(model, valid, dims=dims, ks=[10], batch_size=64).items()}
        print(f"evaluated {c} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if a.seeds > 1:  # each contender's nDCG@10 over the seeds: mean, sample standard deviation, range
        import statistics

        spread = {
            c: {
                str(d): (
                    lambda v: {"mean": statistics.mean(v), "std": statistics.stdev(v), "min": min(v), "max": max(v)}
                )([metrics[f"{c} seed {s}"][str(d)]["ndcg@10"] for s in seeds])
                for d in dims
            }
            for c in contenders
        }
        for c in contenders:
            metrics[c] = {
                str(d): {
                    "ndcg@10": spread[c][str(d)]["mean"],
                    "recall@10": statistics.mean(metrics[f"{c} seed {s}"][str(d)]["recall@10"] for s in seeds),
                    "mrr@10": statistics.mean(metrics[f"{c} seed {s}"][str(d)]["mrr@10"] for s in seeds),
                }
                for d in dims
            }
        models = {"base": None, **{c: None for c in contenders}}  # the table shows the means
    else:
        spread = {}
    rows = []
    for d in dims:
        for c in models:
            m = metrics[c][str(d)]
            rows.append([d, c, m["ndcg@10"], m["recall@10"], m["mrr@10"]])
    delta = (
        {
            str(d): metrics["embed_nb"][str(d)]["ndcg@10"] - metrics["sentence_transformers"][str(d)]["ndcg@10"]
            for d in dims
        }
        if {"embed_nb", "sentence_transformers"} <= set(metrics)
        else {}
    )
    result = report(
        "quality",
        a,
        a.device,
        valid={"queries": len(valid.queries), "corpus": len(valid.corpus)},
        train_pairs=len(pairs),
        training=trained,
        metrics=metrics,
        ndcg10_embed_nb_minus_st=delta,
        ndcg10_over_seeds=spread,
        target_met=all(v >= -0.005 for v in delta.values()) if delta else None,
    )
    print(
        f"\n{result['environment']['device']}: {a.steps} steps of batch {a.batch_size} "
        f"(lr {a.lr}, temperature {a.temperature}), "
        f"InsuranceQA valid: {len(valid.queries)} questions, {len(valid.corpus)} answers\n"
    )
    print(markdown_table(["dim", "model", "nDCG@10", "Recall@10", "MRR@10"], rows))
    if delta:
        print(
            "\nnDCG@10 embed_nb - sentence-transformers: "
            + ", ".join(f"{d}: {v:+.4f}" for d, v in delta.items())
            + (f" (means over {a.seeds} seeds)" if spread else "")
        )
    if spread:
        print(f"\nnDCG@10 over {a.seeds} training seeds (mean ± sample std, [min, max]):\n")
        print(
            markdown_table(
                ["dim"] + contenders,
                [
                    [d]
                    + [
                        f"{spread[c][str(d)]['mean']:.4f} ± {spread[c][str(d)]['std']:.4f} "
                        f"[{spread[c][str(d)]['min']:.4f}, {spread[c][str(d)]['max']:.4f}]"
                        for c in contenders
                    ]
                    for d in dims
                ],
            )
        )
    print("wrote", save(a.name or f"quality_{a.device}", result))


if __name__ == "__main__":
    main()
