import json, os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_data"

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    "A tiny random sentence-transformers model whose vocabulary covers the example data."
    from embed_nb.model import make_tiny_model
    texts = []
    for name in ["hard_neg", "scored", "distill"]:
        for line in open(EXAMPLES / f"{name}.jsonl"):
            d = json.loads(line)
            texts += [d["query"], *d.get("pos", []), *d.get("neg", [])]
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), texts, hidden=32)
