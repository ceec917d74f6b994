import inspect
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
