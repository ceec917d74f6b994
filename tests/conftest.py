"""What the tests share: the tiny models (fixtures), a small training config, a yaml writer, what a run wrote (losses,
weights) and the check that two runs trained alike; and the summary of fatal errors of launched processes."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_data"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")

# `make test` runs the tests in two processes (pytest-xdist, --dist loadgroup). Launchers that take a fixed port
# unless told otherwise (torchrun and accelerate launch: 29500; DeepSpeed in one process binds MASTER_PORT, 29500) must
# not run at the same time: the tests that start them are marked `@pytest.mark.xdist_group("fixed_port")`
# (test_distributed.py as a whole) and run one after another, in one group. embed_nb's own launcher picks a free port,
# so its tests run anywhere.


def example_texts() -> list[str]:
    "Every query and document of the example data, for a tiny model's vocabulary."
    texts = []
    for name in ["hard_neg", "scored", "distill"]:
        for line in open(EXAMPLES / f"{name}.jsonl"):
            d = json.loads(line)
            texts += [d["query"], *d.get("pos", []), *d.get("neg", [])]
    return texts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    "A tiny random sentence-transformers model whose vocabulary covers the example data."
    from embed_nb.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), example_texts(), hidden=32)


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tmp_path_factory):
    "The same without dropout, so that two runs differ only in how their batches are split."
    from embed_nb.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny0"), example_texts(), hidden=32, dropout=0.0)


def run_config(model, out, data: str = "hard_neg", **kw) -> dict:
    """A small training run of `model` on `example_data/{data}.jsonl` into `out`: 5 optimizer steps of 8 rows, each
    logged, seeded, no warm-up, no checkpoints (a `distill` run with its teacher vectors); `kw` overrides any key."""
    cfg = dict(
        model_name_or_path=str(model),
        train_dataset=str(EXAMPLES / f"{data}.jsonl"),
        output_dir=str(out),
        batch_size=8,
        neg_nums=2,
        max_steps=5,
        log_interval=1,
        lr=5e-4,
        warmup_proportion=0.0,
        save_on_epoch_end=False,
        seed=7,
    )
    if data == "distill":
        cfg.update(train_type="distill", train_dataset_vec=str(EXAMPLES / "distill_teacher.f32"))
    return {**cfg, **kw}


def write_yaml(path, cfg: dict) -> Path:
    "Write `cfg` as a yaml config file (a line `key: value` each, values in JSON, which yaml reads); return its path."
    path = Path(path)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return path


def accelerate_launch(accelerate_config, train_config, *options, env=None, timeout=300):
    """`accelerate launch --config_file accelerate_config [options] -m embed_nb.train --config train_config` (the
    spec's way to start a run), its output captured."""
    exe = Path(sys.executable).parent / "accelerate"
    cmd = [str(exe), "launch", "--config_file", str(accelerate_config), *map(str, options)]
    cmd += ["-m", "embed_nb.train", "--config", str(train_config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def log_records(run_dir) -> list[dict]:
    "The records of a run's log.jsonl."
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def losses(run_dir) -> np.ndarray:
    "The logged training losses of a run, in step order (evaluation records left out)."
    return np.array([r["loss"] for r in log_records(run_dir) if "loss" in r])


def weights(model_dir) -> dict:
    "Every tensor of a saved model (sentence-transformers folder: transformer, pooling, Dense head), by name."
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    return {k: v.detach().clone() for k, v in st.state_dict().items()}


def max_change(a: dict, b: dict) -> float:
    "The largest difference between the weights `a` and the same weights in `b` (which may have more: a new head)."
    assert a and a.keys() <= b.keys(), a.keys() - b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def assert_same_run(a, b) -> float:
    """Runs `a` and `b` (their folders) trained alike: as many logged losses, each within 1e-4 of the other
    (relative), and the saved weights within 1e-5. Only the order of float32 sums differs (several processes,
    GradCache's mini-batches); measured: losses within 3e-6, weights within 5e-6 (scored data, two processes).
    Returns the largest weight difference."""
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) >= 4, (la, lb)
    assert (np.abs(la - lb) / np.abs(la)).max() <= 1e-4, (la, lb)
    wa, wb = weights(Path(a) / "model"), weights(Path(b) / "model")
    assert wa.keys() == wb.keys()
    diff = max_change(wa, wb)
    assert diff <= 1e-5, diff
    return diff


# A launched process that dies of a signal (a C++ abort, a segfault) prints why and, through torch's fault handler, its
# threads' Python stacks on stderr; pytest puts that in the middle of a long report. The lines that say why, with each
# thread's innermost frames, are repeated at the end of the run, where a CI log's tail shows them.
WHY = re.compile(r"terminate called|what\(\):|Fatal Python error|Segmentation fault|Thread 0x|Current thread")
FRAME = re.compile(r'^\s+File ".*", line \d+ in ')
crashes = {}


def pytest_runtest_logreport(report):
    if not report.failed:
        return
    lines, frames = [], 0
    for line in (ln for name, text in report.sections if "stderr" in name for ln in text.splitlines()):
        if WHY.search(line):
            lines.append(line)
            frames = 0
        elif FRAME.search(line) and frames < 6 and lines:
            lines.append(line)
            frames += 1
    if lines:
        crashes[report.nodeid] = lines


def pytest_terminal_summary(terminalreporter):
    for nodeid, lines in crashes.items():
        terminalreporter.section(f"fatal errors printed during {nodeid}", sep="-")
        for line in lines[:80]:
            terminalreporter.line(line)
