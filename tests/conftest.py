import inspect
import re
import json
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_data"

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


# `make test` runs the tests in two processes (pytest-xdist, --dist loadgroup). Launchers that take a fixed port unless
# told otherwise (torchrun and accelerate launch: 29500; DeepSpeed in one process binds MASTER_PORT, 29500) must not run
# at the same time: the tests that use them run one after another, in one group. embed_nb's own launcher picks a free
# port, so its tests run anywhere.
FIXED_PORT = ("torchrun", '"launch"', "deepspeed")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ == "test_distributed" or any(s in inspect.getsource(item.function) for s in FIXED_PORT):
            item.add_marker(pytest.mark.xdist_group("fixed_port"))


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
    for line in (l for name, text in report.sections if "stderr" in name for l in text.splitlines()):
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
