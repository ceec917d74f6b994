"""Every kind of bad input gets one clear message naming file, line and problem, exit code 2, no traceback,
and nothing already saved is lost."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
import numpy as np
import pytest
from embed_nb.cli import main
from conftest import EXAMPLES, write_yaml

GOOD = {"query": "how heavy is it", "pos": ["it weighs ten grams"]}


def write(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def train_cli(config: dict, tmp_path):
    "Run `embed-nb train` in-process; return (exit code, stderr)."
    cfg = write_yaml(tmp_path / "cfg.yaml", config)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--config", str(cfg)])
    return code, err.getvalue()


CASES = [  # (lines of the data file, expected line number, expected problem)
    ([GOOD, '{"query": "q", "pos": ["p"'], 2, "invalid JSON"),
    ([GOOD, {"pos": ["p"]}], 2, "missing 'query'"),
    ([{"query": "", "pos": ["p"]}], 1, "'query' must be a non-empty string"),
    ([GOOD, GOOD, {"query": "q", "pos": "p"}], 3, "'pos' must be a non-empty list of strings"),
    ([{"query": "q", "pos": []}], 1, "'pos' must be a non-empty list of strings"),
    ([{"query": "q", "pos": ["a", "b"], "scores": [1.0]}], 1, "'scores' has 1 values but 'pos' has 2 documents"),
    ([{"query": "q", "pos": ["a"], "scores": ["high"]}], 1, "'scores' must be a list of finite numbers"),
    ([GOOD, {"query": "q", "pos": ["a"], "scores": [1.0]}], 2, "this line is in the 'scored' format"),
    ([GOOD, {"query": "q"}], 2, "this line is in the 'distill' format"),
    ([GOOD, '{"query": "\\ud800 a", "pos": ["p"]}'], 2, "'query' (at character 1) holds a lone surrogate"),
    ([GOOD, '{"query": "a", "pos": ["p"], "query": "b"}'], 2, "'query' is given twice in this line"),
    ([{"query": "q", "pos": ["a"], "scores": [1e300]}], 1, "'scores' must lie within"),
]


@pytest.mark.parametrize("lines,line,problem", CASES, ids=[c[2].split("'")[1] if "'" in c[2] else c[2] for c in CASES])
def test_bad_data_line(lines, line, problem, tiny_model, tmp_path):
    data = write(tmp_path / "train.jsonl", *lines)
    code, err = train_cli(
        {"model_name_or_path": tiny_model, "train_dataset": str(data), "output_dir": str(tmp_path / "out")}, tmp_path
    )
    assert code == 2
    assert err.startswith(f"embed-nb: error: {data}:{line}: ") and problem in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_empty_file(tiny_model, tmp_path):
    data = write(tmp_path / "empty.jsonl", "", "   ")
    code, err = train_cli({"model_name_or_path": tiny_model, "train_dataset": str(data)}, tmp_path)
    assert code == 2 and f"{data}: file is empty" in err


def test_memmap_of_the_wrong_size(tiny_model, tmp_path):
    data = write(tmp_path / "d.jsonl", {"query": "a"}, {"query": "b"}, {"query": "c"})
    vec = tmp_path / "t.f32"
    np.zeros((2, 8), dtype=np.float32).tofile(vec)
    code, err = train_cli(
        {
            "model_name_or_path": tiny_model,
            "train_type": "distill",
            "train_dataset": str(data),
            "train_dataset_vec": str(vec),
            "teatch_emebedding_dim": 8,
        },
        tmp_path,
    )
    assert (
        code == 2
        and f"{vec}: teacher embeddings file has 64 bytes, but 3 rows x 8 dims x 4 bytes (float32) = 96" in err
    ), err


@pytest.mark.parametrize(
    "text,expected",
    [
        ("train_dataset: x.jsonl\nbatchsize: 8\n", "cfg.yaml:2: unknown key 'batchsize' (did you mean 'batch_size'?)"),
        ("train_dataset: x.jsonl\nlr: fast\n", "cfg.yaml:2: 'lr' could not convert string to float"),
        ("train_dataset: x.jsonl\nmixed_precision: fp8\n", "cfg.yaml:2: 'mixed_precision' must be no, fp16 or bf16"),
        ("train_dataset: [x\n", "cfg.yaml:2: invalid yaml"),
        ("lr: 1e-5\n", "'train_dataset' is required"),
        ("train_dataset: /no/such/file.jsonl\n", "/no/such/file.jsonl: file not found"),
        (
            "train_dataset: x.jsonl\nbatch_size: 8\nbatch_size: 16\n",
            "cfg.yaml:3: 'batch_size' is given twice (first on line 2)",
        ),
    ],
)
def test_bad_config(text, expected, tmp_path):
    (tmp_path / "cfg.yaml").write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 2 and expected in err.getvalue(), err.getvalue()


def test_subprocess_message_has_no_traceback_and_keeps_saved_model(tiny_model, tmp_path):
    "A real `embed-nb` process: exit 2, one paragraph; a model saved earlier in output_dir survives."
    out = tmp_path / "out"
    good = write(tmp_path / "good.jsonl", GOOD, {"query": "what does it cost", "pos": ["it costs ten dollars"]})
    run = {"model_name_or_path": tiny_model, "train_dataset": str(good), "output_dir": str(out)}
    ok = write_yaml(tmp_path / "ok.yaml", {**run, "epochs": 1, "batch_size": 2})
    assert main(["train", "--config", str(ok)]) == 0
    saved = {p: p.read_bytes() for p in (out / "model").rglob("*") if p.is_file()}
    bad = write(tmp_path / "bad.jsonl", GOOD, {"query": "q", "pos": ["a"], "scores": [1, 2]})
    cfg = write_yaml(tmp_path / "bad.yaml", {**run, "train_dataset": str(bad)})
    r = subprocess.run(
        [str(Path(sys.executable).parent / "embed-nb"), "train", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"embed-nb: error: {bad}:2: 'scores' has 2 values but 'pos' has 1 documents"
    assert "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in (out / "model").rglob("*") if p.is_file()} == saved


def eval_cli(args, tmp_path):
    "Run `embed-nb eval` in-process; return (exit code, stderr)."
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["eval", *args])
    return code, err.getvalue()


def beir(tmp_path, corpus, queries, qrels):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True, exist_ok=True)
    write(d / "corpus.jsonl", *corpus)
    write(d / "queries.jsonl", *queries)
    (d / "qrels" / "test.tsv").write_text(qrels)
    return d


DOCS, QUERIES = (
    [{"_id": "d1", "text": "cats purr"}, {"_id": "d2", "text": "dogs bark"}],
    [{"_id": "q1", "text": "purring"}],
)
EVAL_CASES = [  # (corpus, queries, qrels, extra args, expected problem)
    (DOCS, QUERIES, "q1\td1\t1\nq1\td9\t1\n", [], "qrels/test.tsv:2: document 'd9' is not in corpus.jsonl"),
    ([], QUERIES, "q1\td1\t1\n", [], "corpus.jsonl: no documents"),
    (DOCS, [], "q1\td1\t1\n", [], "queries.jsonl: no query has a relevant document in test.tsv"),
    ([{"id": "d1", "text": "x"}], QUERIES, "q1\td1\t1\n", [], 'corpus.jsonl:1: expected {"_id"'),
    (DOCS, QUERIES, "q1\td1\t1\nq1\td2\tyes\n", [], "test.tsv:2: score 'yes' is not a number"),
    (DOCS, QUERIES, "q1\td1\t1\n", ["--dims", "0"], "must be at least 1"),
    (DOCS, QUERIES, "q1\td1\t1\n", ["--k", "0"], "must be at least 1"),
    (DOCS, QUERIES, "q1\td1\t1\n", ["--dims", "4096"], "dimension 4096 exceeds the model's 32"),
]


@pytest.mark.parametrize(
    "corpus,queries,qrels,extra,problem", EVAL_CASES, ids=[c[4].split(":")[-1][:30] for c in EVAL_CASES]
)
def test_bad_eval_input(corpus, queries, qrels, extra, problem, tiny_model, tmp_path):
    code, err = eval_cli(
        ["--model", tiny_model, "--data", str(beir(tmp_path, corpus, queries, qrels)), *extra], tmp_path
    )
    last = err.strip().splitlines()[-1]  # (the model's own loading bar may come first)
    assert code == 2 and last.startswith("embed-nb: error: ") and problem in last and "Traceback" not in err, err


def test_eval_out_a_directory_fails_before_the_work(tiny_model, tmp_path):
    code, err = eval_cli(["--model", tiny_model, "--data", str(EXAMPLES / "eval"), "--out", str(tmp_path)], tmp_path)
    assert code == 2 and "--out" in err and err.count("\n") == 1, err


def test_missing_model_folder_and_unloadable_name(tiny_model, tmp_path):
    data = write(tmp_path / "d.jsonl", GOOD)
    code, err = train_cli(
        {
            "model_name_or_path": str(tmp_path / "nowhere"),
            "train_dataset": str(data),
            "output_dir": str(tmp_path / "out"),
        },
        tmp_path,
    )
    assert code == 2 and f"model_name_or_path: {tmp_path / 'nowhere'}: no such folder" in err, err
    assert not (tmp_path / "out").exists()
    code, err = eval_cli(["--model", "./nowhere-model", "--data", str(EXAMPLES / "eval")], tmp_path)
    assert code == 2 and "model_name_or_path: ./nowhere-model: no such folder" in err, err


def test_latin1_bytes_name_the_line(tiny_model, tmp_path):
    data = tmp_path / "latin.jsonl"
    data.write_bytes((json.dumps(GOOD) + "\n").encode() * 2 + b'{"query": "caf\xe9", "pos": ["x"]}\n')
    code, err = train_cli({"model_name_or_path": tiny_model, "train_dataset": str(data)}, tmp_path)
    assert code == 2 and f"{data}:3: not UTF-8 text (byte 0xe9 at column 15)" in err, err


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_teacher_file_of_another_dtype(dtype, tiny_model, tmp_path):
    data = write(tmp_path / "d.jsonl", *[{"query": f"q{i}"} for i in range(8)])
    vecs = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(dtype).tofile(tmp_path / "t.vec")
    base = {
        "model_name_or_path": tiny_model,
        "train_type": "distill",
        "train_dataset": str(data),
        "train_dataset_vec": str(tmp_path / "t.vec"),
        "output_dir": str(tmp_path / "out"),
    }
    code, err = train_cli(base, tmp_path)
    assert code == 2 and "is it float16 or float64?" in err, err
    (tmp_path / "t.vec.json").write_text(json.dumps({"rows": 8, "dim": 32, "dtype": dtype}))
    code, err = train_cli(base, tmp_path)
    assert code == 2 and f"t.vec.json says dtype {dtype}: embed_nb reads float32 vectors" in err, err


def test_unreadable_files_are_one_line(tiny_model, tmp_path):
    """A config or data file without read permission: one line each (as root, run without the capabilities that
    bypass it)."""
    import os
    import shutil

    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root reads every file, and setpriv is not here to drop that power")
        caps = "-dac_override,-dac_read_search,-fowner"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    data = write(tmp_path / "d.jsonl", GOOD)
    run = {"model_name_or_path": tiny_model, "train_dataset": str(data), "output_dir": str(tmp_path / "out")}
    cfg = write_yaml(tmp_path / "c.yaml", run)
    for unreadable in (cfg, data):
        unreadable.chmod(0)
        r = subprocess.run(
            prefix + [sys.executable, "-m", "embed_nb.cli", "train", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (
            r.returncode == 2
            and r.stderr.strip().splitlines()[-1] == f"embed-nb: error: {unreadable}: cannot read: Permission denied"
        ), r.stderr[-2000:]
        unreadable.chmod(0o644)
