"""GradCache memory and time: batch 512 (or more) with `cached: true` against batch 32 without, same model, data and lengths.

Each run is a fresh process training embed_nb (all-MiniLM-L6-v2, max_seq_length 256, InsuranceQA train pairs); peak
memory is the process's peak resident set (CPU) or torch's peak allocated memory (GPU). A third process only loads the
libraries, the model and the data and builds the optimizer, without training: its peak is the floor that every run
pays, so the increments over it are what training itself needs. Runs alternate for --rounds rounds.

    .venv/bin/python bench/gradcache_memory.py --rounds 2 --cached-batch-size 512
"""

from __future__ import annotations
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, ensure_requirements, markdown_table, median, parser, peak_rss_mib, report, run_worker
from common import save, train_pairs, write_jsonl

THROUGHPUT = Path(__file__).resolve().parent / "throughput.py"


def parse(argv=None):
    p = parser(__doc__, "worker", "data")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="the uncached batch")
    p.add_argument("--cached-batch-size", type=int, default=512)
    p.add_argument("--mini-batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps of the uncached run")
    p.add_argument("--cached-steps", type=int, default=2, help="timed steps of the cached run")
    p.add_argument(
        "--cached-warmup",
        type=int,
        default=1,
        help="untimed steps of the cached run first (0: time from the train() call, loading included)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default: gradcache_memory_<device>)")
    return p.parse_args(argv)


def load_only(a) -> dict:
    "What every run pays before its first step: libraries, model, data (tokenised), optimizer."
    import torch
    from embed_nb.data import EmbeddingDataset
    from embed_nb.model import Embedding
    from embed_nb.core import TrainConfig
    from embed_nb.data import make_loader
    from embed_nb.train import _optimizer

    model = Embedding.from_pretrained(device=a.device)
    make_loader(
        EmbeddingDataset(a.data),
        model.tokenizer,
        TrainConfig(batch_size=a.batch_size, query_max_len=256, passage_max_len=256),
    )
    _optimizer(model, TrainConfig())
    out = {"contender": "load_only", "peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv=None):
    a = parse(argv)
    if a.worker == "load_only":
        print(json.dumps(load_only(a)))
        return
    ensure_requirements()
    pairs = train_pairs(a.cached_batch_size * max(a.cached_warmup + a.cached_steps, 1), a.seed)
    data = write_jsonl(pairs, Path(tempfile.mkdtemp(prefix="iqa_")) / "train_pairs.jsonl")
    common = [
        f"--data={data}",
        f"--device={a.device}",
        f"--seed={a.seed}",
        f"--mini-batch-size={a.mini_batch_size}",
    ] + (["--bf16"] if a.bf16 else [])
    contenders = {
        f"uncached batch {a.batch_size}": [
            str(THROUGHPUT),
            "--worker=embed_nb",
            f"--batch-size={a.batch_size}",
            f"--steps={a.steps}",
            "--warmup=2",
            *common,
        ],
        f"cached batch {a.cached_batch_size}": [
            str(THROUGHPUT),
            "--worker=embed_nb_cached",
            f"--batch-size={a.cached_batch_size}",
            f"--steps={a.cached_steps}",
            f"--warmup={a.cached_warmup}",
            *common,
        ],
        "load only": [str(Path(__file__)), "--worker=load_only", f"--batch-size={a.batch_size}", *common],
    }
    names = list(contenders)
    runs = alternate(
        names,
        a.rounds,
        lambda c: run_worker(Path(contenders[c][0]), contenders[c][1:]),
        lambda res: (
            f"peak RSS {res['peak_rss_mib']:7.0f} MiB"
            + (f"  {res['samples_per_s']:.2f} samples/s" if "samples_per_s" in res else "")
        ),
    )
    key = "peak_gpu_mib" if a.device == "cuda" else "peak_rss_mib"
    summary = {
        c: {
            "median_peak_mib": median([x[key] for x in v]),
            "median_samples_per_s": median([x["samples_per_s"] for x in v]) if "samples_per_s" in v[0] else None,
        }
        for c, v in runs.items()
    }
    base, small, big = summary["load only"]["median_peak_mib"], summary[names[0]], summary[names[1]]
    ratio = big["median_peak_mib"] / small["median_peak_mib"]
    increment_ratio = (big["median_peak_mib"] - base) / (small["median_peak_mib"] - base)
    time_ratio = small["median_samples_per_s"] / big["median_samples_per_s"]
    result = report(
        "gradcache_memory",
        a,
        a.device,
        summary=summary,
        runs=runs,
        memory_ratio=ratio,
        memory_increment_ratio=increment_ratio,
        time_per_sample_ratio=time_ratio,
        target_memory_ratio_at_most=1.3,
        target_met=ratio <= 1.3,
    )
    rows = [
        [
            c,
            s["median_peak_mib"],
            s["median_peak_mib"] - base if c != "load only" else "-",
            s["median_samples_per_s"] or "-",
        ]
        for c, s in summary.items()
    ]
    print(
        f"\n{result['environment']['device']}, {a.rounds} rounds, mini_batch_size {a.mini_batch_size}, peak "
        f"{'GPU allocated' if a.device == 'cuda' else 'resident'} memory\n"
    )
    print(markdown_table(["run", "peak MiB (median)", "over load-only MiB", "samples/s"], rows))
    print(
        f"\npeak memory cached {a.cached_batch_size} / uncached {a.batch_size}: {ratio:.2f}x (target <= 1.3x); "
        f"training's own share: {increment_ratio:.2f}x; time per sample: {time_ratio:.2f}x"
    )
    print("wrote", save(a.name or f"gradcache_memory_{a.device}", result))


if __name__ == "__main__":
    main()
