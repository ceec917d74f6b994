"""Time to the first step against the size of the data: how long `train()` takes before its first batch reaches the model.

For each --pairs size, fresh processes train embed_nb (all-MiniLM-L6-v2, max length 256, batch --batch-size) on that
many InsuranceQA train pairs for one step. Times from the `train()` call: the first batch made (the collator's first
return: data read and checked, model loaded, lengths estimated, batches drawn, the first batch tokenised) and the end of
optimizer step 1 (a training callback). Medians over --rounds; sizes alternate. The step itself is the model's work on
the epoch's longest batch, which grows with the longest text, not with the number of pairs.

    .venv/bin/python bench/first_step.py --pairs 1024,4096,16384 --rounds 3
"""

from __future__ import annotations
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    alternate,
    environment,
    markdown_table,
    median,
    parser,
    report,
    run_worker,
    save,
    train_pairs,
    write_jsonl,
)


def parse(argv=None):
    p = parser(__doc__, "worker", "data")
    p.add_argument("--pairs", default="1024,4096,16384")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--name", default=None, help="results file name (default: first_step_<device>)")
    return p.parse_args(argv)


def worker(a) -> dict:
    import torch
    import embed_nb.data as data
    from embed_nb.train import train

    marks = {}
    collate = data.CachedCollator.__call__

    def first(self, items):  # when the first batch is ready for the model
        b = collate(self, items)
        marks.setdefault("batch", time.perf_counter())
        return b

    data.CachedCollator.__call__ = first

    def step(record):
        if "loss" in record and "step" not in marks:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks["step"] = time.perf_counter()

    cfg = dict(
        train_dataset=a.data,
        output_dir=tempfile.mkdtemp(),
        batch_size=a.batch_size,
        max_steps=1,
        log_interval=1,
        query_max_len=256,
        passage_max_len=256,
        save_on_epoch_end=False,
        mixed_precision="no",
    )
    marks["call"] = time.perf_counter()
    train(cfg, callbacks=[step])
    return {"first_batch_s": marks["batch"] - marks["call"], "first_step_s": marks["step"] - marks["call"]}


def main(argv=None):
    a = parse(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    sizes = [int(s) for s in a.pairs.split(",")]
    pairs = train_pairs(max(sizes))
    files = {n: write_jsonl(pairs[:n], Path(tempfile.mkdtemp()) / f"pairs{n}.jsonl") for n in sizes}
    worker_args = ["--worker=1", f"--batch-size={a.batch_size}", f"--device={a.device}"]
    runs = alternate(
        sizes,
        a.rounds,
        lambda n: run_worker(Path(__file__), [*worker_args, f"--data={files[n]}"], tokenizer_threads=True),
        lambda res: f"first batch {res['first_batch_s']:.2f} s, step 1 done {res['first_step_s']:.2f} s",
    )
    summary = {
        n: {k: median([x[k] for x in v]) for k in ("first_batch_s", "first_step_s", "process_s")}
        for n, v in runs.items()
    }
    rows = [[n, s["first_batch_s"], s["first_step_s"], s["process_s"]] for n, s in summary.items()]
    print(
        f"\n{environment(a.device)['device']}, batch {a.batch_size}, {a.rounds} rounds (median), tokenizer threads as the "
        "environment has them\n"
    )
    print(markdown_table(["pairs", "train() call to first batch, s", "to end of step 1, s", "process, s"], rows))
    result = report("first_step", a, a.device, summary=summary, runs=runs)
    print("wrote", save(a.name or f"first_step_{a.device}", result))


if __name__ == "__main__":
    main()
