"""Shared pieces of the benchmarks: InsuranceQA loading (installed at run time, never copied into the repository),
workers that train one contender in a fresh process, and the markdown/JSON reporting."""
from __future__ import annotations
import ast, importlib.util, json, os, platform, random, resource, statistics, subprocess, sys, time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))


def ensure_requirements(modules=("datasets", "insuranceqa_data")):
    "Install bench/requirements.txt (datasets, insuranceqa-data==1.0) into this Python when one of `modules` is missing."
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing {', '.join(missing)} from bench/requirements.txt", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements.txt")], check=True)


def insuranceqa(split: str) -> tuple[list[dict], dict]:
    "The English questions of `split` ('train' or 'valid'), each `{query, answers: [ids], negatives: [ids]}`, and the answer pool."
    if split == "test": raise ValueError("the InsuranceQA test split is reserved for outside evaluation")
    ensure_requirements()
    import insuranceqa_data as iqa
    data = {"train": iqa.load_train, "valid": iqa.load_valid}[split]()
    pool = {k: v["en"].strip() for k, v in iqa.load_answers().items()}
    ids = lambda v: [str(x) for x in (ast.literal_eval(v) if isinstance(v, str) else v)]
    questions = [{"query": " ".join(v["en"].split()), "answers": ids(v["answers"]), "negatives": ids(v.get("negatives", "[]"))}
                 for _, v in sorted(data.items(), key=lambda kv: int(kv[0]))]
    return questions, pool


def train_pairs(max_pairs: int | None, seed: int = 0) -> list[tuple[str, str]]:
    "(question, answer) pairs of the train split, one per answer, in a seeded random order, at most `max_pairs`."
    questions, pool = insuranceqa("train")
    pairs = [(q["query"], pool[a]) for q in questions for a in q["answers"]]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


def read_pairs(path, max_pairs: int | None) -> list[tuple[str, str]]:
    "(query, first positive) pairs of an embed_nb jsonl file, at most `max_pairs` (for machines where InsuranceQA cannot be installed)."
    pairs = [(r["query"], r["pos"][0]) for r in map(json.loads, open(path, encoding="utf-8")) if r]
    return pairs[:max_pairs] if max_pairs else pairs


def write_jsonl(pairs, path: Path) -> Path:
    "Pairs as embed_nb training data (a temporary file, outside the repository)."
    with open(path, "w", encoding="utf-8") as f:
        for q, a in pairs: f.write(json.dumps({"query": q, "pos": [a]}) + "\n")
    return path


def peak_rss_mib() -> float:
    "Peak resident memory of this process (Linux reports KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: str) -> str:
    import torch
    if device == "cuda": return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def run_worker(script: Path, args: list[str], timeout: int = 3600, tokenizer_threads: bool = False) -> dict:
    "Run `script --worker ...` in a fresh process; its last stdout line is a JSON result (`process_s` added: its wall time)."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not tokenizer_threads:
        env["TOKENIZERS_PARALLELISM"] = "false"
    start = time.perf_counter()
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - start}


def median(xs): return statistics.median(xs) if xs else float("nan")


def markdown_table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def environment(device: str) -> dict:
    import torch, transformers, sentence_transformers
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_name(device), "torch": torch.__version__,
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}
