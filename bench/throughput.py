"""Training throughput: embed_nb against sentence-transformers' SentenceTransformerTrainer, side by side.

Every contender trains the embedded all-MiniLM-L6-v2 (max_seq_length 256) on the same InsuranceQA train pairs, with the
same batch size, steps, seed, learning rate, schedule, temperature (MultipleNegativesRankingLoss scale = 1/temperature)
and, with --mrl, Matryoshka dimensions. Each run is a fresh process (so its peak memory is its own); the contenders
alternate within each round, in a rotated order, for --rounds rounds. samples/s counts the steps after --warmup.

    .venv/bin/python bench/throughput.py --rounds 3 --steps 20 --batch-size 32          # CPU
    .venv/bin/python bench/throughput.py --device cuda --bf16 --steps 100 --batch-size 128  # GPU (bench/gpu.sh)

Contenders: embed_nb (defaults: length-grouped batches, tokenised once), sentence_transformers (its trainer, default
batch sampler), embed_nb_nogroup (dynamic padding, random batches), embed_nb_maxpad (padding to max length, the spec's
original behaviour), embed_nb_cached (GradCache, --mini-batch-size), embed_nb_compile (compile: true), embed_nb_noattndrop
(attention_dropout: 0). Prints a markdown table, writes bench/results/.

--whole-run: each contender trains one whole epoch of --max-examples pairs and saves its model; reported per contender:
the process's wall time (start to saved model, imports included), the train call's time (embed_nb's `train()` against
`SentenceTransformerTrainer(...).train()` plus its `save`), and the time to the first step (from the call to the end of
optimizer step 1). The tokenizers' threads are left as the user's environment has them (TOKENIZERS_PARALLELISM unset)
unless --tokenizer-threads off.
"""

from __future__ import annotations
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EMBED_NB_OPTIONS, embed_nb_config, mrl_dims, sentence_transformers_side
from common import alternate, ensure_requirements, markdown_table, median, parser, passthrough, peak_rss_mib
from common import read_pairs, report, run_worker, save, train_pairs, write_jsonl

CONTENDERS = ["embed_nb", "sentence_transformers", "embed_nb_nogroup", "embed_nb_maxpad"]


def parse(argv=None):
    p = parser(__doc__, "worker", "data")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps first (steps must be a multiple of it)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="train pairs to draw batches from (default: batch size x (warmup + steps): about one epoch is timed, "
        "so every contender meets the same mix of lengths)",
    )
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mrl", default="", help="Matryoshka dims, e.g. 64,128,256,384 (empty: plain InfoNCE / MNRL)")
    p.add_argument("--mini-batch-size", type=int, default=32, help="for embed_nb_cached")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--model", default=None, help="model folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument(
        "--pairs", default=None, help="a jsonl of {query, pos} pairs to use instead of InsuranceQA (offline machines)"
    )
    p.add_argument("--name", default=None, help="results file name (default: throughput_<device>)")
    p.add_argument(
        "--whole-run", action="store_true", help="time whole runs (one epoch of --max-examples, model saved)"
    )
    p.add_argument(
        "--tokenizer-threads",
        default="off",
        choices=["off", "default"],
        help="TOKENIZERS_PARALLELISM=false in the workers (off), or as the environment has it (default)",
    )
    return p.parse_args(argv)


def _timer(times: dict, marks: set):
    import torch

    def mark(step):
        if step in marks:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[step] = time.perf_counter()

    return mark


def worker_embed_nb(a, name: str) -> dict:
    import torch
    from embed_nb.train import train

    total, times = a.warmup + a.steps, {}
    mark = _timer(times, {1, a.warmup, total})
    cfg = embed_nb_config(
        a,
        mrl_dims(a.mrl),
        model_name_or_path=a.model,
        output_dir=tempfile.mkdtemp(prefix="bench_"),
        max_steps=total,
        epochs=1000,
        log_interval=max(a.warmup, 1),
        mini_batch_size=a.mini_batch_size,
        **EMBED_NB_OPTIONS[name],
    )
    if a.whole_run:
        cfg.update(max_steps=None, epochs=1, log_interval=1)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times["call"] = time.perf_counter()
    train(cfg, callbacks=[lambda r: mark(r["step"]) if "loss" in r else None])
    times["done"] = time.perf_counter()  # the model saved
    return times


def worker_sentence_transformers(a) -> dict:
    import torch
    from transformers import TrainerCallback

    total, times = a.warmup + a.steps, {}
    mark = _timer(times, {1, a.warmup, total})
    model, make_trainer = sentence_transformers_side(a, mrl_dims(a.mrl), a.model)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            mark(state.global_step)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times["call"] = time.perf_counter()  # the trainer is made (and its data prepared) within the timed call
    trainer = make_trainer(
        total,
        [Timer()],
        max_steps=-1 if a.whole_run else total,
        num_train_epochs=1,
        logging_steps=a.warmup,
        dataloader_num_workers=0,
    )
    trainer.train()
    model.save(tempfile.mkdtemp(prefix="bench_st_model_"))
    times["done"] = time.perf_counter()
    return times


def worker(a) -> dict:
    import torch

    start = time.perf_counter()
    times = worker_sentence_transformers(a) if a.worker == "sentence_transformers" else worker_embed_nb(a, a.worker)
    dt = times[a.warmup + a.steps] - (times[a.warmup] if a.warmup else times["call"])  # --warmup 0: from the call
    out = {
        "contender": a.worker,
        "samples_per_s": a.steps * a.batch_size / dt,
        "timed_s": dt,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mib": peak_rss_mib(),
        "train_call_s": times["done"] - times["call"],
        "first_step_s": times[1] - times["call"] if 1 in times else None,
    }  # step 1 is logged in --whole-run
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def padding_shares(pairs, batch_size: int, max_len: int, model: str | None = None) -> dict:
    "Share of padding tokens among the answers' tokens, random batches against length-grouped ones (embed_nb's sampler)."
    from transformers import AutoTokenizer
    from embed_nb.data import BatchSampler, TokenCache, padding_fraction
    from embed_nb.model import default_model_path

    cache = TokenCache(AutoTokenizer.from_pretrained(model or default_model_path()), max_len)
    q, d = cache.lengths([p[0] for p in pairs]), cache.lengths([p[1] for p in pairs])
    grouped = list(BatchSampler(q + d, batch_size))
    rand = list(BatchSampler(q + d, batch_size, group_by_length=False))
    return {
        "answers_random": padding_fraction(rand, d),
        "answers_grouped": padding_fraction(grouped, d),
        "answers_max_length": 1 - d.mean() / max_len,
        "questions_random": padding_fraction(rand, q),
        "mean_answer_tokens": float(d.mean()),
        "mean_question_tokens": float(q.mean()),
    }


BF16_PEAK_TFLOPS = {
    "H100": 989.4,
    "H200": 989.4,
    "A100": 312.0,
}  # dense bf16 tensor-core peaks (SXM), NVIDIA's data sheets


def model_flops_per_sample(model: str | None, q_tokens: float, d_tokens: float) -> dict:
    """Training FLOPs of one (question, answer) pair: 6 x non-embedding parameters x tokens + attention
    (12 x layers x width x length^2)."""
    import torch
    from transformers import AutoConfig, AutoModel
    from embed_nb.distributed import _hf_folder
    from embed_nb.model import default_model_path

    cfg = AutoConfig.from_pretrained(_hf_folder(model or default_model_path()))
    with torch.device("meta"):
        hf = AutoModel.from_config(cfg)
    params = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("embeddings.") and "pooler" not in n)
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * (q_tokens**2 + d_tokens**2)
    return {"non_embedding_parameters": params, "flops_per_sample": 6 * params * (q_tokens + d_tokens) + attention}


def main(argv=None):
    a = parse(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if a.warmup < 1 or a.steps % a.warmup:
        raise SystemExit("--steps must be a multiple of --warmup (at least 1)")
    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    ensure_requirements(
        (["datasets"] if "sentence_transformers" in contenders else []) + ([] if a.pairs else ["insuranceqa_data"])
    )
    n = a.max_examples or a.batch_size * (a.warmup + a.steps)
    pairs = read_pairs(a.pairs, n) if a.pairs else train_pairs(n, a.seed)
    data = write_jsonl(pairs, Path(tempfile.mkdtemp(prefix="iqa_")) / "train_pairs.jsonl")
    options = [
        "steps",
        "warmup",
        "batch_size",
        "max_seq_length",
        "temperature",
        "lr",
        "seed",
        "mrl",
        "mini_batch_size",
    ]
    worker_args = passthrough(a, *options, "device", "model", "bf16", "whole_run")
    runs = alternate(
        contenders,
        a.rounds,
        lambda c: run_worker(
            Path(__file__),
            [f"--worker={c}", f"--data={data}", *worker_args],
            tokenizer_threads=a.tokenizer_threads == "default",
        ),
        lambda res: (
            f"{res['samples_per_s']:8.2f} samples/s  peak RSS {res['peak_rss_mib']:7.0f} MiB"
            + (f"  peak GPU {res['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in res else "")
        ),
    )
    summary = {
        c: {
            "median_samples_per_s": median([x["samples_per_s"] for x in v]),
            **{
                f"median_{k}": median([x[k] for x in v if x.get(k) is not None])
                for k in ("train_call_s", "first_step_s", "process_s")
            },
            "median_peak_rss_mib": median([x["peak_rss_mib"] for x in v]),
            **(
                {"median_peak_gpu_mib": median([x["peak_gpu_mib"] for x in v])} if v and "peak_gpu_mib" in v[0] else {}
            ),
        }
        for c, v in runs.items()
    }
    ref = summary.get("sentence_transformers", {}).get("median_samples_per_s")
    maxpad = summary.get("embed_nb_maxpad", {}).get("median_samples_per_s")
    ref_call = summary.get("sentence_transformers", {}).get("median_train_call_s")
    ref_proc = summary.get("sentence_transformers", {}).get("median_process_s")
    for c, s in summary.items():
        s["train_call_speedup_vs_sentence_transformers"] = ref_call / s["median_train_call_s"] if ref_call else None
        s["process_speedup_vs_sentence_transformers"] = ref_proc / s["median_process_s"] if ref_proc else None
        s["ratio_vs_sentence_transformers"] = s["median_samples_per_s"] / ref if ref else None
        s["ratio_vs_maxpad"] = s["median_samples_per_s"] / maxpad if maxpad else None
    padding = padding_shares(pairs, a.batch_size, a.max_seq_length, a.model)
    result = report("throughput", a, a.device, padding=padding, summary=summary, runs=runs)
    pad = result["padding"]
    flops = model_flops_per_sample(a.model, pad["mean_question_tokens"], pad["mean_answer_tokens"])
    peak = (
        next((v for k, v in BF16_PEAK_TFLOPS.items() if k in result["environment"]["device"]), None)
        if a.bf16
        else None
    )
    result["model_flops"] = {**flops, "peak_tflops": peak, "counted": "real tokens only (padding is not useful work)"}
    for s in summary.values():
        s["model_tflops"] = s["median_samples_per_s"] * flops["flops_per_sample"] / 1e12
        s["mfu"] = s["model_tflops"] / peak if peak else None
    gpu = "median_peak_gpu_mib" in next(iter(summary.values()))
    header = [
        "contender",
        "samples/s (median)",
        "per round",
        "× sentence-transformers",
        "× max-length padding",
        "peak RSS MiB",
    ] + (["peak GPU MiB"] if gpu else [])
    rows = [
        [
            c,
            s["median_samples_per_s"],
            " ".join(f"{x['samples_per_s']:.2f}" for x in runs[c]),
            s["ratio_vs_sentence_transformers"] or "-",
            s["ratio_vs_maxpad"] or "-",
            s["median_peak_rss_mib"],
        ]
        + ([s["median_peak_gpu_mib"]] if gpu else [])
        for c, s in summary.items()
    ]
    print(
        f"\n{result['environment']['device']}, batch {a.batch_size}, {a.steps} timed steps, {a.rounds} rounds, "
        f"max_seq_length {a.max_seq_length}{', bf16' if a.bf16 else ''}{', MRL ' + a.mrl if a.mrl else ''}\n"
    )
    print(markdown_table(header, rows))
    if a.whole_run:
        wh = [
            "contender",
            "train call s (median)",
            "per round",
            "× faster than sentence-transformers",
            "first step s",
            "process s (start to saved model)",
            "× faster (process)",
        ]
        wr = [
            [
                c,
                s["median_train_call_s"],
                " ".join(f"{x['train_call_s']:.1f}" for x in runs[c]),
                s["train_call_speedup_vs_sentence_transformers"] or "-",
                s["median_first_step_s"],
                s["median_process_s"],
                s["process_speedup_vs_sentence_transformers"] or "-",
            ]
            for c, s in summary.items()
        ]
        print(f"\nwhole runs: one epoch of {n} pairs, model saved; tokenizer threads {a.tokenizer_threads}\n")
        print(markdown_table(wh, wr))
    print(
        "\nmodel FLOPs (6 x %.1fM non-embedding parameters x real tokens + attention): "
        % (flops["non_embedding_parameters"] / 1e6)
        + ", ".join(
            f"{c} {s['model_tflops']:.2f} TFLOP/s" + (f" = {s['mfu']:.1%} of {peak} (bf16 peak)" if s["mfu"] else "")
            for c, s in summary.items()
        )
    )
    print(
        f"\npadding share of answer tokens: random batches {pad['answers_random']:.1%}, "
        f"length-grouped {pad['answers_grouped']:.1%}, max length {pad['answers_max_length']:.1%} "
        f"(mean answer {pad['mean_answer_tokens']:.0f} tokens, question {pad['mean_question_tokens']:.0f})"
    )
    print("wrote", save(a.name or f"throughput_{a.device}", result))


if __name__ == "__main__":
    main()
