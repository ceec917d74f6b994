"""Every GPU entry point x strategy x precision at world size 1, plus a ~0.5B-parameter decoder with LoRA and gradient
checkpointing under ZeRO-2, ZeRO-3 and FSDP: one table (entry point, strategy, precision, ok or the error's first line,
loss first -> last, peak GPU memory, saved model loads). Random-init weights from configs (no download).

    python tools/checks/gpu_check.py         # on one GPU (tools/checks/gpu_check.sh), within ~8 minutes
    python tools/checks/gpu_check.py --cpu   # the CPU-capable subset, small shapes: checks the script itself
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example_data"
# Qwen2-0.5B's transformer (no LM head): the decoder rows here and padding_nan.py's decoder
QWEN2_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
)
sys.path.insert(0, str(ROOT / "bench"))
from common import random_bert  # noqa: E402  (bench/common.py: the benchmarks' random BERT folder)

# every run's config (12 steps on example_data/hard_neg.jsonl), and what a decoder row with LoRA changes in it
RUN = dict(
    train_dataset=str(EXAMPLES / "hard_neg.jsonl"),
    neg_nums=3,
    batch_size=16,
    max_steps=12,
    log_interval=1,
    lr=1e-4,
    save_on_epoch_end=False,
    query_max_len=32,
    passage_max_len=64,
)
LORA = dict(
    lora={"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    gradient_checkpointing=True,
    query_prompt="Instruct: find the answer\nQuery: ",
    use_mrl=False,
    batch_size=8,
)


def bert_model(path: Path, small: bool, tokenizer: str | None = None) -> str:
    "MiniLM-L6 shape (random weights; small: 2 layers, 32 wide) with a real BERT tokenizer, as a sentence-transformers folder."
    hidden, layers, heads = (32, 2, 2) if small else (384, 6, 12)
    return random_bert(path, hidden, layers, heads, tokenizer, max_seq_length=128)


def decoder_model(path: Path, small: bool) -> str:
    "A Qwen2-0.5B-shaped decoder (random weights; small: the 2-layer test decoder), last-token pooling."
    from embed_nb.model import make_tiny_decoder

    rows = [json.loads(line) for line in open(EXAMPLES / "hard_neg.jsonl")]
    texts = [r["query"] for r in rows] + [d for r in rows for d in r["pos"] + r["neg"]]
    if small:
        return make_tiny_decoder(path, texts)
    from transformers import Qwen2Config, Qwen2Model

    st_dir = make_tiny_decoder(path, texts, hidden=896)  # tokenizer and pooling; the weights are replaced below
    cfg = Qwen2Config(**QWEN2_05B, max_position_embeddings=4096, tie_word_embeddings=True)
    Qwen2Model(cfg).save_pretrained(Path(st_dir))  # the Transformer module's files live at the folder's top
    return st_dir


def run(cmd: list[str], out: Path, timeout: int, log: Path | None = None) -> dict:
    "Run one entry point; what it did."
    start = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        rc, err = r.returncode, r.stderr
        if log:
            log.write_text(" ".join(cmd) + f"\nexit {rc}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", f"no end after {timeout} s"
        if log:
            log.write_text(" ".join(cmd) + f"\ntimeout\n--- stdout\n{e.stdout}\n--- stderr\n{e.stderr}")
    row = {"seconds": round(time.time() - start, 1), "ok": rc == 0}
    if rc != 0:
        lines = (
            [line for line in err.splitlines() if "Error" in line or "error:" in line]
            or err.strip().splitlines()[-1:]
            or [str(rc)]
        )
        row["error"] = lines[-1].strip()[:160]
    log = out / "log.jsonl"
    log_lines = log.read_text().splitlines() if log.is_file() else []
    losses = [json.loads(line)["loss"] for line in log_lines if '"loss"' in line]
    if losses:
        row["loss"] = f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    run_json = out / "run.json"
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        row["peak_gib"], row["ran as"] = info.get("peak_gpu_memory_gib"), info.get("distributed_type")
    try:
        from sentence_transformers import SentenceTransformer

        row["loads"] = SentenceTransformer(str(out / "model"), device="cpu").encode(["a test"]).shape[1] > 0
    except Exception as e:  # noqa: BLE001 - the table says what went wrong
        row["loads"] = False
        row.setdefault("error", f"load: {type(e).__name__}: {str(e)[:100]}")
    return row


def fsdp_yaml(tmp: Path, version: int) -> Path:
    import yaml

    spec = yaml.safe_load((EXAMPLES / "accelerate" / "default_fsdp.yaml").read_text())
    spec["fsdp_config"]["fsdp_version"] = version
    if version == 2:  # FSDP2 names its options differently
        spec["fsdp_config"].pop("fsdp_sharding_strategy", None)
        spec["fsdp_config"]["fsdp_reshard_after_forward"] = True
    path = tmp / f"fsdp{version}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true", help="the CPU-capable subset with small shapes")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    p.add_argument("--timeout", type=int, default=180, help="seconds per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (they share the GPU; each gets its own ports)")
    p.add_argument("--logs", default=None, help="keep each run's stdout and stderr in this folder")
    p.add_argument(
        "--only", default=None, help="run only the cases whose 'entry point strategy precision' matches this regex"
    )
    p.add_argument(
        "--tokenizer", default=None, help="a BERT tokenizer folder (default: the bundled all-MiniLM-L6-v2's)"
    )
    a = p.parse_args()
    py, bindir = sys.executable, Path(sys.executable).parent
    tool = lambda name: str(bindir / name) if (bindir / name).exists() else (shutil.which(name) or name)
    tmp = Path(tempfile.mkdtemp())
    bert, dec = bert_model(tmp / "bert", a.cpu, a.tokenizer), decoder_model(tmp / "dec", a.cpu)
    precisions = ["no", "bf16"] if a.cpu else ["no", "fp16", "bf16"]
    base = dict(RUN, use_mrl=True, mrl_dims=[64, 128, 384] if not a.cpu else [8, 32])
    cases = []  # (entry point, strategy, precision, config path, output folder, command)

    def case(entry, strategy, precision, model, cmd_for, **extra):
        i = len(cases)
        out, cfg, port = tmp / f"run{i}", tmp / f"cfg{i}.yaml", 29600 + i
        cfg.write_text(
            json.dumps(
                {**base, "model_name_or_path": model, "output_dir": str(out), "mixed_precision": precision, **extra}
            )
        )
        cases.append((entry, strategy, precision, out, cmd_for(cfg, port)))

    cpu_env = ["env", "ACCELERATE_USE_CPU=true"] if a.cpu else []
    launch_py = (
        "import sys, yaml; from embed_nb.train import launch; launch(yaml.safe_load(open(sys.argv[1])), "
        "num_processes=1, strategy=sys.argv[2], zero_stage=int(sys.argv[3]))"
    )
    acc = tool("accelerate")
    for precision in precisions:
        for strategy, zero in [("ddp", 2), ("fsdp", 2), ("deepspeed", 1), ("deepspeed", 2), ("deepspeed", 3)]:
            name = strategy + (f"-zero{zero}" if strategy == "deepspeed" else "")
            case(
                "launch()",
                name,
                precision,
                bert,
                lambda c, port, s=strategy, z=zero: [py, "-c", launch_py, str(c), s, str(z)],
            )
            case(
                "embed-nb train",
                name,
                precision,
                bert,
                lambda c, port, s=strategy, z=zero: [
                    tool("embed-nb"),
                    "train",
                    "--config",
                    str(c),
                    "--num-processes",
                    "1",
                    "--strategy",
                    s,
                    "--zero-stage",
                    str(z),
                ],
            )
        case(
            "torchrun -m embed_nb.train",
            "ddp",
            precision,
            bert,
            lambda c, port: [
                *cpu_env,
                tool("torchrun"),
                "--nproc_per_node",
                "1",
                "--master_port",
                str(port),
                "-m",
                "embed_nb.train",
                "--config",
                str(c),
            ],
        )
        for zero in (1, 2, 3):
            case(
                "accelerate launch (deepspeed_zero2.yaml)",
                f"deepspeed-zero{zero}",
                precision,
                bert,
                lambda c, port, z=zero: [
                    acc,
                    "launch",
                    "--config_file",
                    str(EXAMPLES / "accelerate" / "deepspeed_zero2.yaml"),
                    "--num_processes",
                    "1",
                    "--main_process_port",
                    str(port),
                    "--zero_stage",
                    str(z),
                    "-m",
                    "embed_nb.train",
                    "--config",
                    str(c),
                ],
            )
        if not a.cpu:  # accelerate's FSDP plugin needs a GPU
            for version in (1, 2):
                case(
                    "accelerate launch (default_fsdp.yaml)",
                    f"fsdp{version}",
                    precision,
                    bert,
                    lambda c, port, v=version: [
                        acc,
                        "launch",
                        "--config_file",
                        str(fsdp_yaml(tmp, v)),
                        "--num_processes",
                        "1",
                        "--main_process_port",
                        str(port),
                        "-m",
                        "embed_nb.train",
                        "--config",
                        str(c),
                    ],
                )
    full = dict(LORA, lora=None, gradient_checkpointing=False)
    for strategy, zero, how in [
        ("deepspeed", 2, LORA),
        ("deepspeed", 3, LORA),
        ("fsdp", 2, LORA),
        ("ddp", 2, LORA),
        ("fsdp", 2, full),
    ]:
        name = (
            ("decoder+LoRA " if how["lora"] else "decoder ")
            + strategy
            + (f"-zero{zero}" if strategy == "deepspeed" else "")
        )
        case(
            "launch()",
            name,
            "no" if a.cpu else "bf16",
            dec,
            lambda c, port, s=strategy, z=zero: [py, "-c", launch_py, str(c), s, str(z)],
            **how,
        )
    if a.only:
        cases = [c for c in cases if re.search(a.only, " ".join(c[:3]))]
    logs = Path(a.logs) if a.logs else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)

    def one(i_case):
        i, (entry, strategy, precision, out, cmd) = i_case
        row = {
            "entry point": entry,
            "strategy": strategy,
            "precision": precision,
            **run(cmd, out, a.timeout, logs / f"{i:02d}.log" if logs else None),
        }
        print(json.dumps(row), flush=True)
        return row

    from concurrent.futures import ThreadPoolExecutor

    start = time.time()
    first = sorted(enumerate(cases), key=lambda ic: "decoder" not in ic[1][1])  # the longest runs start first
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        done = dict(zip([i for i, _ in first], pool.map(one, first)))
    rows = [done[i] for i in range(len(cases))]
    cols = ["entry point", "strategy", "precision", "ran as", "ok", "loss", "peak_gib", "loads", "seconds", "error"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    ok = sum(bool(r["ok"] and r.get("loads")) for r in rows)
    print(
        f"\n{ok} of {len(rows)} runs trained and saved a model that loads; {time.time() - start:.0f} s with {a.jobs} at a time"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    sys.exit(0 if ok == len(rows) else 1)


if __name__ == "__main__":
    main()
