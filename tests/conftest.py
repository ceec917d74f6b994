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
