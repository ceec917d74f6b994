"""Shared pieces of the benchmarks: InsuranceQA loading (installed at run time, never copied into the repository),
the settings embed_nb and sentence-transformers' trainer share in a comparison, a random BERT folder, workers that
train one contender in a fresh process, and the markdown/JSON reporting."""

from __future__ import annotations
import argparse
import ast
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HIDDEN = ("worker", "data", "out", "corpus_file", "tune_data")  # options only a script's own worker processes get
ALL_DIRECTIONS = ["query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc"]
sys.path.insert(0, str(ROOT))
# embed_nb's contenders in the comparisons: each one's options over the defaults
EMBED_NB_OPTIONS = {
    "embed_nb": {},
    "embed_nb_nogroup": dict(group_by_length=False),
    "embed_nb_maxpad": dict(group_by_length=False, pad_to_max_length=True),
    "embed_nb_cached": dict(cached=True),
    "embed_nb_nodup": dict(no_duplicates=True),
    "embed_nb_mult16": dict(pad_to_multiple_of=16),
    "embed_nb_mult64": dict(pad_to_multiple_of=64),
    "embed_nb_compile": dict(compile=True),
    "embed_nb_noattndrop": dict(attention_dropout=0.0),
    # quality recipes (bench/quality.py): DEFAULT leaves a setting at embed_nb's default instead of the script's
    "embed_nb_defaults": dict(lr="DEFAULT", temperature="DEFAULT"),
    "embed_nb_seed_defaults": dict(
        lr=2e-5, temperature=0.02, loss_directions=["query_to_doc"], false_negative_margin=None
    ),  # the original trainer's lr and temperature, plain InfoNCE
    "embed_nb_plain": dict(loss_directions=["query_to_doc"], false_negative_margin=None),
    # Matryoshka on the model's own vectors (no Dense head), with the mask and without (sentence-transformers' method)
    "embed_nb_nohead": dict(mrl_head=False),
    "embed_nb_plain_nohead": dict(mrl_head=False, loss_directions=["query_to_doc"], false_negative_margin=None),
    "embed_nb_mask": dict(loss_directions=["query_to_doc"], false_negative_margin=0.1),
    "embed_nb_gte": dict(loss_directions=ALL_DIRECTIONS, false_negative_margin=None),
    "embed_nb_gte_mask": dict(loss_directions=ALL_DIRECTIONS, false_negative_margin=0.1),
    "embed_nb_lr1e4": dict(lr=1e-4, loss_directions=["query_to_doc"], false_negative_margin=None),
    "embed_nb_lr1e4_mask": dict(lr=1e-4, loss_directions=["query_to_doc"], false_negative_margin=0.1),
    "embed_nb_t03": dict(temperature=0.03, loss_directions=["query_to_doc"], false_negative_margin=None),
    # keep_best: the best mix of fine-tuned and base weights, chosen on valid questions the report never uses (TUNE)
    "embed_nb_merge": dict(eval_dataset="TUNE", merge_base=True),
    # ... and the final weights averaged with the checkpoints of steps 40 and 50 (of 60) as one more candidate
    "embed_nb_average": dict(eval_dataset="TUNE", merge_base=True, save_steps=10, num_max_checkpoints=5),
    "embed_nb_sym_mask": dict(
        loss_directions=["query_to_doc", "doc_to_query"], loss_partition="per_direction", false_negative_margin=0.1
    ),
}
# sentence-transformers' contenders: the loss each trains with (MultipleNegativesRankingLoss unless `gist`)
ST_LOSSES = {
    "sentence_transformers": {},
    "st_symmetric": dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
    "st_gte": dict(directions=tuple(ALL_DIRECTIONS), partition_mode="joint"),
    "st_gist": dict(gist=True),  # GISTEmbedLoss with the base model as guide
}


def parser(doc: str, *hidden: str) -> argparse.ArgumentParser:
    "A script's arguments: its docstring's first paragraph as the description, and the `hidden` worker options (of HIDDEN)."
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name in hidden:
        p.add_argument(f"--{name.replace('_', '-')}", default=None, help=argparse.SUPPRESS)
    return p


def mrl_dims(text: str) -> list[int]:
    "Matryoshka dimensions from a comma-separated list (empty: none)."
    return [int(d) for d in text.split(",") if d.strip()]


def ensure_requirements(modules=("datasets", "insuranceqa_data")):
    "Install bench/requirements.txt (datasets, insuranceqa-data==1.0) into this Python when one of `modules` is missing."
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing {', '.join(missing)} from bench/requirements.txt", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements.txt")], check=True
        )


def insuranceqa(split: str) -> tuple[list[dict], dict]:
    """The English questions of `split` ('train' or 'valid'), each `{query, answers: [ids], negatives: [ids]}`, and the
    answer pool."""
    if split == "test":
        raise ValueError("the InsuranceQA test split is reserved for outside evaluation")
    ensure_requirements()
    import insuranceqa_data as iqa

    data = {"train": iqa.load_train, "valid": iqa.load_valid}[split]()
    pool = {k: v["en"].strip() for k, v in iqa.load_answers().items()}
    ids = lambda v: [str(x) for x in (ast.literal_eval(v) if isinstance(v, str) else v)]
    questions = [
        {"query": " ".join(v["en"].split()), "answers": ids(v["answers"]), "negatives": ids(v.get("negatives", "[]"))}
        for _, v in sorted(data.items(), key=lambda kv: int(kv[0]))
    ]
    return questions, pool


def train_pairs(max_pairs: int | None, seed: int = 0) -> list[tuple[str, str]]:
    "(question, answer) pairs of the train split, one per answer, in a seeded random order, at most `max_pairs`."
    questions, pool = insuranceqa("train")
    pairs = [(q["query"], pool[a]) for q in questions for a in q["answers"]]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


def read_pairs(path, max_pairs: int | None) -> list[tuple[str, str]]:
    """(query, first positive) pairs of an embed_nb jsonl file, at most `max_pairs` (for machines where InsuranceQA cannot
    be installed)."""
    pairs = [(r["query"], r["pos"][0]) for r in map(json.loads, open(path, encoding="utf-8")) if r]
    return pairs[:max_pairs] if max_pairs else pairs


def write_jsonl(pairs, path: Path) -> Path:
    "Pairs as embed_nb training data (a temporary file, outside the repository)."
    with open(path, "w", encoding="utf-8") as f:
        for q, a in pairs:
            f.write(json.dumps({"query": q, "pos": [a]}) + "\n")
    return path


def embed_nb_config(a, dims: list[int], **extra) -> dict:
    """embed_nb's `train()` config in a comparison with sentence-transformers' trainer: the settings both share (data,
    batch, lr, temperature, schedule, lengths, seed, precision, Matryoshka), from a script's arguments `a`; `extra` adds
    to them or overrides them (a value "DEFAULT" drops the key: embed_nb's default applies)."""
    config = (
        dict(
            train_dataset=a.data,
            batch_size=a.batch_size,
            lr=a.lr,
            temperature=a.temperature,
            warmup_proportion=0.1,
            weight_decay=0.01,
            max_grad_norm=1.0,
            query_max_len=a.max_seq_length,
            passage_max_len=a.max_seq_length,
            seed=a.seed,
            save_on_epoch_end=False,
            mixed_precision="bf16" if getattr(a, "bf16", False) else "no",
            use_mrl=bool(dims),
            mrl_dims=dims or None,
        )
        | extra
    )
    return {k: v for k, v in config.items() if v != "DEFAULT"}


def sentence_transformers_side(a, dims: list[int], model: str | None = None, loss: dict | None = None):
    """sentence-transformers' side of the same comparison: its model (`model`, default the bundled all-MiniLM-L6-v2;
    max_seq_length set), and `make_trainer(total, callbacks, **args)`: a `SentenceTransformerTrainer` on the pairs of
    `a.data` with MultipleNegativesRankingLoss (scale = 1/temperature; in MatryoshkaLoss with `dims`) and the settings
    `embed_nb_config` gives embed_nb (cosine schedule, 10% warmup); `args` add to its training arguments or override
    them. `loss`: MultipleNegativesRankingLoss's options (`directions`, `partition_mode`), or `gist=True` for GISTEmbedLoss
    with the base model as its guide (its temperature: the script's). Everything is imported and loaded here, so that a
    timer started after this call times the trainer only."""
    import datasets
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MatryoshkaLoss
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
        from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.losses import GISTEmbedLoss, MatryoshkaLoss, MultipleNegativesRankingLoss
    from embed_nb.model import default_model_path

    rows = [json.loads(line) for line in open(a.data)]
    data = datasets.Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows]})
    st = SentenceTransformer(model or default_model_path(), device=a.device)
    st.max_seq_length = a.max_seq_length
    loss = dict(loss or {})
    if loss.pop("gist", False):
        guide = SentenceTransformer(model or default_model_path(), device=a.device)
        guide.max_seq_length = a.max_seq_length
        loss = GISTEmbedLoss(st, guide, temperature=a.temperature)
    else:
        loss = MultipleNegativesRankingLoss(st, scale=1 / a.temperature, **loss)
    if dims:
        loss = MatryoshkaLoss(st, loss, matryoshka_dims=sorted(dims, reverse=True))

    def make_trainer(total: int, callbacks=(), **args):
        settings = dict(
            output_dir=tempfile.mkdtemp(prefix="bench_st_"),
            per_device_train_batch_size=a.batch_size,
            max_steps=total,
            learning_rate=a.lr,
            warmup_steps=int(0.1 * total),
            lr_scheduler_type="cosine",
            weight_decay=0.01,
            max_grad_norm=1.0,
            seed=a.seed,
            data_seed=a.seed,
            save_strategy="no",
            report_to="none",
            bf16=a.bf16,
            use_cpu=a.device == "cpu",
            disable_tqdm=True,
        )
        args = SentenceTransformerTrainingArguments(**(settings | args))
        return SentenceTransformerTrainer(
            model=st, args=args, train_dataset=data, loss=loss, callbacks=list(callbacks)
        )

    return st, make_trainer


def random_bert(
    path, hidden: int = 384, layers: int = 6, heads: int = 12, tokenizer: str | None = None, max_seq_length: int = 256
) -> str:
    """A BERT of this shape with random weights and a real BERT tokenizer (default: the bundled all-MiniLM-L6-v2's):
    the compute of the real model, no download. Saved under `path`: `hf/` (transformers) and `st/` (sentence-transformers,
    mean pooling, normalised); returns the `st/` folder."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:
        from sentence_transformers.sentence_transformer import modules as models  # sentence-transformers >= 6
    except ImportError:
        from sentence_transformers import models
    from embed_nb.model import default_model_path

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(tokenizer or default_model_path())
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(path / "hf")
    tok.save_pretrained(path / "hf")
    word = models.Transformer(str(path / "hf"), max_seq_length=max_seq_length)
    st = SentenceTransformer(modules=[word, models.Pooling(hidden, "mean"), models.Normalize()], device="cpu")
    st.save(str(path / "st"))
    return str(path / "st")


def peak_rss_mib() -> float:
    "Peak resident memory of this process (Linux reports KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def passthrough(a, *names: str) -> list[str]:
    "The options `names` of a script's arguments `a` for a worker's command line: a flag when true, none when None or false."
    args = []
    for name in names:
        value, option = getattr(a, name), "--" + name.replace("_", "-")
        if value is True:
            args.append(option)
        elif value is not None and value is not False:
            args.append(f"{option}={value}")
    return args


def alternate(contenders: list, rounds: int, run, progress) -> dict:
    """Each contender once a round for `rounds` rounds, each round starting one further along (no contender always runs
    first); `run(c)` runs one and returns its result, `progress(result)` is the line printed after it. The results of
    each contender, in round order."""
    runs = {c: [] for c in contenders}
    for r in range(rounds):
        for c in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            runs[c].append(run(c))
            print(f"round {r + 1}/{rounds} {str(c):22} {progress(runs[c][-1])}", file=sys.stderr, flush=True)
    return runs


def run_worker(script: Path, args: list[str], timeout: int = 3600, tokenizer_threads: bool = False) -> dict:
    "Run `script --worker ...` in a fresh process; its last stdout line is a JSON result (`process_s` added: its wall time)."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not tokenizer_threads:
        env["TOKENIZERS_PARALLELISM"] = "false"
    start = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT)
    )
    if p.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - start}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def markdown_table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: (
        f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def report(benchmark: str, a, device: str = "cpu", **fields) -> dict:
    "A result to save: what ran (the benchmark, its command line and settings), where (`environment`), then `fields`."
    settings = {k: v for k, v in vars(a).items() if k not in HIDDEN}
    return {
        "benchmark": benchmark,
        "argv": sys.argv[1:],
        "settings": settings,
        "environment": environment(device),
    } | fields


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def environment(device: str) -> dict:
    import torch
    import transformers
    import sentence_transformers

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
