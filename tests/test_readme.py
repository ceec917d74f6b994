"""Every command of README.md and README.zh-CN.md runs from the repository root: their Python (the code cells of
`nbs/index.ipynb`, which README.md is made from, and the ```python blocks) and each line of their ```bash blocks (a line
in both, once), in order, in one folder laid out as the repository root (its `example_data/`), so what one line writes
the next can read; the shell lines run before the Python. Left out: `make demo` and
`make test` (the second is what runs this test; CI runs both). `CE`, `T1` and `T2`, which README says stand for models
the reader has, are tiny random models here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = [(ROOT / name).read_text() for name in ("README.md", "README.zh-CN.md")]
pytestmark = pytest.mark.xdist_group(
    "readme"
)  # one process runs them, in order: the Python reads what the shell wrote


def blocks(language: str) -> list[str]:
    "The fenced blocks of the READMEs in `language`, each once."
    found = [b for text in READMES for b in re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)]
    return list(dict.fromkeys(found))


def python_snippets() -> list[str]:
    cells = json.loads((ROOT / "nbs" / "index.ipynb").read_text())["cells"]
    return list(dict.fromkeys(["".join(c["source"]) for c in cells if c["cell_type"] == "code"] + blocks("python")))


def shell_lines() -> list[str]:
    lines = [line.strip() for block in blocks("bash") for line in block.splitlines()]
    return list(dict.fromkeys(line for line in lines if line and not line.startswith(("#", "make "))))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    "A folder laid out as the repository root, and the models that stand in for CE, T1 and T2."
    from embed_nb.mine import make_tiny_cross_encoder
    from embed_nb.model import make_tiny_model

    root = tmp_path_factory.mktemp("root")
    (root / "example_data").symlink_to(ROOT / "example_data")
    texts = [json.loads(line)["query"] for line in open(ROOT / "example_data" / "distill.jsonl")]
    models = {
        "CE": make_tiny_cross_encoder(root / "ce", texts),
        "T1": make_tiny_model(root / "t1", texts, hidden=32),
        "T2": make_tiny_model(root / "t2", texts, hidden=16),
    }
    return root, {k: str(v) for k, v in models.items()}


def run(args, cwd, timeout=900):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_has_the_commands_this_test_runs():
    "A README without these would make the tests below pass for nothing."
    assert len(python_snippets()) >= 3 and len(shell_lines()) >= 7
    assert any(line.startswith("embed-nb mine") for line in shell_lines())


def test_shell_commands_run_from_the_root(root):
    folder, models = root
    for line in shell_lines():
        for name, path in models.items():
            line = re.sub(rf"\b{name}\b", path, line)
        p = run(["bash", "-c", line], folder)
        assert p.returncode == 0, f"{line}\n{p.stderr[-3000:]}"
    assert (folder / "runs" / "hard_neg" / "model").is_dir() and (folder / "runs" / "results.json").is_file()
    assert (folder / "runs" / "distill.f32").is_file() and (folder / "runs" / "scored.jsonl").is_file()


def test_python_runs_from_the_root(root):
    folder, _ = root
    for code in python_snippets():
        p = run([sys.executable, "-c", code], folder)
        assert p.returncode == 0, f"{code}\n{p.stderr[-3000:]}"
    assert (folder / "runs" / "readme" / "model").is_dir() and (folder / "runs" / "ddp" / "model").is_dir()
