"""Where a CPU step's time goes: step time against the padded shapes of embed_nb's batches, fitted, then used to bound
what any batching can gain over sentence-transformers' random batches with the same model and kernels.

embed_nb trains one epoch of --max-examples InsuranceQA pairs (all-MiniLM-L6-v2, max length 256, as
`throughput.py --whole-run`); each optimizer step's wall time is taken in a training callback and each batch's padded
shape at the collator. A least-squares fit, time = a + b x tokens + c x sum of squared lengths (the attention term),
over steps 2.. (step 1 also loads the model) then predicts one epoch of: random batches (sentence-transformers'
sampler; mean over --draws seeds), embed_nb's length-grouped batches on exact lengths, and no padding at all (every
text its own length: the bound of padding-free attention). With the fit, "x faster" for any batching is a ratio of
predicted epochs; `--compare` adds the measured sentence-transformers step from a `throughput.py --whole-run` result.

    .venv/bin/python bench/step_cost.py --max-examples 1024 --batch-size 32 --compare bench/results/whole_run_cpu.json
"""

from __future__ import annotations
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, parser, report, save, train_pairs, write_jsonl


def parse(argv=None):
    p = parser(__doc__)
    p.add_argument("--max-examples", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--draws", type=int, default=5, help="seeds of random batches averaged")
    p.add_argument("--compare", default=None, help="a throughput.py --whole-run result with sentence_transformers")
    p.add_argument("--compile", action="store_true", help="train with compile: true")
    p.add_argument("--name", default="step_cost_cpu")
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    import numpy as np
    import embed_nb.data as data
    from embed_nb.train import train

    pairs = train_pairs(a.max_examples)
    path = write_jsonl(pairs, Path(tempfile.mkdtemp()) / "pairs.jsonl")
    shapes, marks = [], []
    collate = data.CachedCollator.__call__

    def record(self, items):  # the padded shape of each batch, as the model receives it
        b = collate(self, items)
        shapes.append((tuple(b["query"]["input_ids"].shape), tuple(b["docs"]["input_ids"].shape)))
        return b

    data.CachedCollator.__call__ = record
    cfg = dict(
        train_dataset=str(path),
        output_dir=tempfile.mkdtemp(),
        batch_size=a.batch_size,
        epochs=1,
        log_interval=1,
        lr=2e-5,
        temperature=0.05,
        warmup_proportion=0.1,
        weight_decay=0.01,
        max_grad_norm=1.0,
        query_max_len=a.max_seq_length,
        passage_max_len=a.max_seq_length,
        seed=0,
        save_on_epoch_end=False,
        compile=a.compile,
    )
    start = time.perf_counter()
    train(cfg, callbacks=[lambda r: marks.append(time.perf_counter()) if "loss" in r else None])
    data.CachedCollator.__call__ = collate
    steps = np.diff([start] + marks)
    n = len(steps)
    shapes = shapes[:n]  # (a background thread never collates: every shape is a step's)
    tok = lambda qs, ds: qs[0] * qs[1] + ds[0] * ds[1]
    sq = lambda qs, ds: qs[0] * qs[1] ** 2 + ds[0] * ds[1] ** 2
    X = np.array([[1, tok(*s), sq(*s)] for s in shapes], dtype=float)
    coef, *_ = np.linalg.lstsq(X[1:], steps[1:], rcond=None)
    fit = X[1:] @ coef
    r2 = 1 - ((steps[1:] - fit) ** 2).sum() / ((steps[1:] - steps[1:].mean()) ** 2).sum()
    # the epoch's batches under other batchings, from exact token counts
    from transformers import AutoTokenizer
    from embed_nb.model import default_model_path

    cache = data.TokenCache(AutoTokenizer.from_pretrained(default_model_path()), a.max_seq_length)
    q, d = cache.lengths([p[0] for p in pairs]), cache.lengths([p[1] for p in pairs])

    def epoch(batches):
        return sum(
            coef @ [1, len(b) * (q[b].max() + d[b].max()), len(b) * (q[b].max() ** 2 + d[b].max() ** 2)]
            for b in batches
        )

    rand = float(
        np.mean(
            [
                epoch(list(data.BatchSampler(q + d, a.batch_size, group_by_length=False, seed=s)))
                for s in range(a.draws)
            ]
        )
    )
    exact = float(epoch(list(data.BatchSampler(q + d, a.batch_size))))
    free = float(n * coef[0] + coef[1] * (q.sum() + d.sum()) + coef[2] * ((q**2).sum() + (d**2).sum()))
    measured = float(steps[1:].sum() + steps[1:].mean())  # step 1 counted as an average step (it also loads the model)
    result = report(
        "step_cost",
        a,
        fit={
            "seconds_per_step": coef[0],
            "seconds_per_token": coef[1],
            "seconds_per_squared_length": coef[2],
            "r2": r2,
            "steps_fitted": n - 1,
        },
        steps_s=steps.round(3).tolist(),
        shapes=shapes,
        epoch_s={
            "embed_nb_measured": measured,
            "predicted_random_batches": rand,
            "predicted_grouped_exact": exact,
            "predicted_padding_free": free,
        },
        bound_ratio_vs_random={
            "grouped_exact": rand / exact,
            "padding_free": rand / free,
            "embed_nb_measured": rand / measured,
        },
    )
    rows = [
        ["embed_nb, measured (grouped on estimated lengths)", measured, rand / measured],
        ["grouped on exact lengths, predicted", exact, rand / exact],
        ["no padding at all, predicted (the bound)", free, rand / free],
        ["random batches (sentence-transformers' sampler), predicted", rand, 1.0],
    ]
    if a.compare:
        st = json.load(open(a.compare))["runs"]["sentence_transformers"]
        st_step = float(np.median([r["timed_s"] / (r["samples_per_s"] * r["timed_s"] / a.batch_size) for r in st]))
        result["sentence_transformers_measured_step_s"] = st_step
        result["sentence_transformers_predicted_step_s"] = rand / n
        rows.append(
            ["sentence-transformers, measured (" + Path(a.compare).name + ")", st_step * n, rand / (st_step * n)]
        )
    print(
        f"fit over steps 2-{n}: {coef[0]:.3f} s + {coef[1] * 1e3:.3f} ms/token "
        f"+ {coef[2] * 1e6:.3f} us x length^2 (r2 {r2:.3f})\n"
    )
    print(markdown_table(["one epoch of", "s", "x faster than random batches"], rows))
    save(a.name, result)


if __name__ == "__main__":
    main()
