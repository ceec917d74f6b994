"""The faults of issue 24, each one clear line (exit 2, no traceback) and no file that existed before changed: an --out
that is an input, an --out in a folder that cannot be written, a write that fails (a full disk), teacher vectors of
data that changed since, a bi-encoder given as a cross-encoder, and train flags that are ignored or contradict."""

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, run_config, write_yaml

import embed_nb.mine as mine
from embed_nb.cli import main
from embed_nb.core import EmbedNbError
from embed_nb.mine import make_tiny_cross_encoder, mine_hard_negatives, score_with_cross_encoder, teacher_embeddings


def cli(capfd, *args) -> tuple[int, str]:
    "Run `embed-nb` in this process: its exit code and what it printed on stderr."
    capfd.readouterr()
    code = main([str(a) for a in args])
    return code, capfd.readouterr().err


def one_line(err: str, says: str):
    "The error is one line, `embed-nb: error: ...` with `says` in it, and no traceback."
    assert err.count("\n") == 1 and err.startswith("embed-nb: error: ") and says in err, err
    assert "Traceback" not in err


def contents(folder) -> dict:
    "Every file and folder under `folder`, by path: a file's bytes, a link's target, a folder's None."
    read = lambda p: os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return {p: read(p) for p in sorted(Path(folder).rglob("*"))}


def pairs(path, n: int = 20) -> Path:
    "`n` {query, pos} lines, each text about 110 characters."
    pad = " filler words" * 8
    lines = [{"query": f"question {i}{pad}", "pos": [f"answer {i}{pad}"]} for i in range(n)]
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return path


def vec(text: str, dim: int = 8) -> np.ndarray:
    "A fixed random unit vector for each text."
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class Stub:
    "An encoder (`encode`) that gives `vec` of each text and records them; it is stopped (a kill) at the text `stop`."

    def __init__(self, stop=None):
        self.stop, self.seen = stop, []

    def encode(self, texts, batch_size=None):
        if self.stop in texts:
            raise KeyboardInterrupt
        self.seen += texts
        return np.stack([vec(t) for t in texts])


class Grader:
    "A cross-encoder (`predict`): the length of the document."

    def predict(self, pairs, **kw):
        return np.array([len(d) / 100 for _, d in pairs])


# mining options under which a tiny random model keeps negatives (its vectors are all alike: no margin, no copy test)
MINE = ["--range", "1-5", "--num-negatives", "2", "--margin", "2", "--duplicate-score", "1.5"]


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("ce"), [f"question answer {i}" for i in range(20)])


# 1. an --out that is an input (the same path, a symbolic or a hard link): refused before any work, the input kept


@pytest.mark.parametrize("command", ["mine", "mine-corpus", "mine-symlink", "score", "teacher"])
def test_out_that_is_an_input_is_refused(command, capfd, tiny_model, tiny_ce, tmp_path):
    data = pairs(tmp_path / "d.jsonl")
    corpus = tmp_path / "corpus.jsonl"
    texts = [d["pos"][0] for d in map(json.loads, data.read_text().splitlines())] + ["another document"]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out, name = data, "data"
    if command == "mine-symlink":
        out = tmp_path / "link.jsonl"
        out.symlink_to(data)
    if command == "mine-corpus":
        out, name = tmp_path / "hard_link.jsonl", "corpus"
        os.link(corpus, out)
    before = contents(tmp_path)
    args = {
        "score": ["score", "--cross-encoder", tiny_ce, "--data", data, "--out", out],
        "teacher": ["teacher", "--model", tiny_model, "--data", data, "--out", out],
    }.get(command, ["mine", "--model", tiny_model, "--data", data, "--out", out, *MINE])
    if command == "mine-corpus":
        args += ["--corpus", corpus]
    code, err = cli(capfd, *args)
    assert code == 2
    one_line(err, f"out {out} is the same file as the {name} ")
    assert contents(tmp_path) == before


def test_library_functions_refuse_an_input_as_out(tmp_path):
    data = pairs(tmp_path / "d.jsonl")
    before = data.read_bytes()
    for run in [
        lambda: mine_hard_negatives(Stub(), data, data),
        lambda: score_with_cross_encoder(Grader(), data, f"{tmp_path}/./d.jsonl"),
        lambda: teacher_embeddings(Stub(), data, data),
    ]:
        with pytest.raises(EmbedNbError, match="is the same file as the data"):
            run()
    assert data.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["d.jsonl"]


# 2. an --out in a folder that cannot be written: one line naming the folder, before any model loads


def as_unprivileged() -> list[str]:
    "A command prefix that makes root obey file permissions (root ignores them); nothing for another user."
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root writes in any folder, and setpriv is not here to drop that power")
    caps = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps]


@pytest.mark.parametrize("command", ["mine", "score", "teacher"])
def test_out_in_a_read_only_folder(command, tiny_model, tiny_ce, tmp_path):
    data = pairs(tmp_path / "d.jsonl")
    folder = tmp_path / "read_only"
    folder.mkdir()
    (folder / "old.jsonl").write_text("kept\n")
    out = folder / "out.jsonl"
    args = {
        "mine": ["mine", "--model", tiny_model, "--data", data, *MINE],
        "score": ["score", "--cross-encoder", tiny_ce, "--data", data],
        "teacher": ["teacher", "--model", tiny_model, "--data", data],
    }[command]
    before = contents(tmp_path)
    folder.chmod(0o555)
    try:
        r = subprocess.run(
            as_unprivileged() + [sys.executable, "-m", "embed_nb.cli", *map(str, args), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        folder.chmod(0o755)
    assert r.returncode == 2, r.stderr[-2000:]
    one_line(r.stderr, f"out {out}: cannot write in {folder}: Permission denied")
    assert contents(tmp_path) == before


def test_read_only_check_comes_before_any_model(monkeypatch, capfd, tmp_path):
    "Mining into a folder it cannot write in stops before it loads a model (not after the embedding pass)."
    if os.geteuid() == 0:
        pytest.skip("root writes in any folder (the subprocess test above drops that power)")

    def load(*a):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(mine, "_load_encoder", load)
    monkeypatch.setattr(mine, "_load_cross_encoder", load)
    data = pairs(tmp_path / "d.jsonl")
    (tmp_path / "ro").mkdir(mode=0o555)
    code, err = cli(capfd, "mine", "--data", data, "--out", tmp_path / "ro" / "out.jsonl", "--cross-encoder", "x")
    assert code == 2
    one_line(err, f"cannot write in {tmp_path / 'ro'}")


# a write that fails (the disk full, the file too large): one line, the old file as it was, no partial file


@contextlib.contextmanager
def files_at_most(nbytes: int):
    "Within: writing past `nbytes` of a file fails with EFBIG ('File too large'), as a full disk fails a write."
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (else the signal ends the process)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("function", ["mine", "score", "teacher"])
def test_a_failed_write_leaves_no_partial_file(function, capsys, tmp_path):
    "One line, the earlier output as it was, no partial file (capsys: printing goes to memory, not to a limited file)."
    data = pairs(tmp_path / "d.jsonl", n=100)
    out = tmp_path / ("t.f32" if function == "teacher" else "out.jsonl")
    if function != "teacher":
        out.write_text("an earlier output, kept\n")
    before = contents(tmp_path)
    run = {
        "mine": lambda: mine_hard_negatives(Stub(), data, out, num_negatives=1, rank_range=(1, 3), margin=None),
        "score": lambda: score_with_cross_encoder(Grader(), data, out),
        "teacher": lambda: teacher_embeddings(Stub(), data, out),  # 100 rows x 8 float32: 3200 bytes
    }[function]
    with files_at_most(2048), pytest.raises(EmbedNbError, match=f"out {out}: could not write it \\(File too large\\)"):
        run()
    assert contents(tmp_path) == before
    run()  # the same, with room: it works
    assert out.stat().st_size > 2048


# 3. teacher vectors: a rerun on data that changed since (the same path and number of rows) starts over


def test_teacher_starts_over_when_the_data_changed(capfd, tmp_path):
    data, out = tmp_path / "d.jsonl", tmp_path / "t.f32"
    queries = [f"old question {i}" for i in range(512)]
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in queries))
    with pytest.raises(KeyboardInterrupt):  # killed after its first chunk
        teacher_embeddings(Stub(stop=queries[256]), data, out, chunk=256)
    side = json.loads((tmp_path / "t.f32.json").read_text())
    assert (side["done_rows"], side["complete"], side["data_fingerprint"]["size"]) == (256, False, data.stat().st_size)
    new = [f"new question {i}" for i in range(512)]  # rewritten in place: same path, same number of rows
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in new))
    capfd.readouterr()
    meta = teacher_embeddings(Stub(), data, out, chunk=256)
    err = capfd.readouterr().err
    assert f"{out}: {data} changed since these partial vectors were written: computing them again" in err, err
    vecs = np.fromfile(out, dtype=np.float32).reshape(512, 8)
    assert meta["complete"] and np.allclose(vecs, np.stack([vec(q) for q in new]), atol=1e-6)  # no stale row


def test_teacher_resumes_on_the_same_data(capfd, tmp_path):
    data, out = tmp_path / "d.jsonl", tmp_path / "t.f32"
    queries = [f"question {i}" for i in range(512)]
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in queries))
    with pytest.raises(KeyboardInterrupt):
        teacher_embeddings(Stub(stop=queries[256]), data, out, chunk=256)
    os.utime(data)  # touched, not changed: the content decides
    again = Stub()
    capfd.readouterr()
    assert teacher_embeddings(again, data, out, chunk=256)["complete"]
    assert again.seen == queries[:1] + queries[256:] and "computing them again" not in capfd.readouterr().err
    assert np.allclose(np.fromfile(out, dtype=np.float32).reshape(512, 8), np.stack([vec(q) for q in queries]))
    data.write_text(data.read_text().replace('question 3"', 'question three"'))  # a finished file is checked too
    teacher_embeddings(Stub(), data, out, chunk=256)
    assert "changed since these vectors were written" in capfd.readouterr().err
    assert np.allclose(np.fromfile(out, dtype=np.float32).reshape(512, 8)[3], vec("question three"))


# 4. a bi-encoder (or an encoder without a classification head) given as a cross-encoder


@pytest.fixture(scope="module")
def headless(tmp_path_factory, tiny_ce):
    "A BERT without a classification head (transformers' BertModel), and the same whose config.json names none."
    from transformers import BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("headless")
    BertForSequenceClassification.from_pretrained(tiny_ce).bert.save_pretrained(folder / "bare")
    BertTokenizerFast.from_pretrained(tiny_ce).save_pretrained(folder / "bare")
    shutil.copytree(folder / "bare", folder / "unnamed")
    config = json.loads((folder / "unnamed" / "config.json").read_text())
    del config["architectures"]
    (folder / "unnamed" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("command", ["score", "mine"])
def test_a_bi_encoder_is_not_a_cross_encoder(command, monkeypatch, capfd, tiny_model, tmp_path):
    def embed(*a, **kw):
        raise AssertionError("the embedding pass ran before the cross-encoder was checked")

    monkeypatch.setattr(mine, "_unit_encode", embed)
    data, out = pairs(tmp_path / "d.jsonl"), tmp_path / "out.jsonl"
    before = contents(tmp_path)
    args = ["--cross-encoder", tiny_model, "--data", data, "--out", out]
    code, err = cli(
        capfd,
        command,
        *args,
        *(["--model", tiny_model, *MINE] if command == "mine" else []),
    )
    assert code == 2
    one_line(err, f"{tiny_model} is a bi-encoder (sentence-transformers embedding model), not a cross-encoder: ")
    assert contents(tmp_path) == before


def test_an_encoder_without_a_classification_head(capfd, headless, tmp_path):
    data, out = pairs(tmp_path / "d.jsonl"), tmp_path / "out.jsonl"
    code, err = cli(capfd, "score", "--cross-encoder", headless / "bare", "--data", data, "--out", out)
    assert code == 2
    one_line(err, f"{headless / 'bare'} is a bare BertModel without a classification head, not a cross-encoder: ")
    # without a name in its config.json: what transformers logs while loading it (the random head it adds) tells
    code, err = cli(capfd, "score", "--cross-encoder", headless / "unnamed", "--data", data, "--out", out)
    assert code == 2
    one_line(err, f"{headless / 'unnamed'} has no trained classification head (it would be random), not a cross-")
    assert not out.exists()


def test_a_bi_encoder_told_while_loading(monkeypatch, capfd, tiny_model, tmp_path):
    "A name on the hub is not looked into before loading: what sentence-transformers logs as it converts it tells."
    monkeypatch.setattr(mine, "_not_a_cross_encoder", lambda path: None)
    data, out = pairs(tmp_path / "d.jsonl"), tmp_path / "out.jsonl"
    code, err = cli(capfd, "score", "--cross-encoder", tiny_model, "--data", data, "--out", out)
    assert code == 2
    one_line(err, f"{tiny_model} is a bi-encoder (sentence-transformers embedding model), not a cross-encoder: ")
    assert not out.exists()


def test_a_cross_encoder_still_scores(capfd, tiny_ce, tmp_path):
    data, out = pairs(tmp_path / "d.jsonl", n=3), tmp_path / "out.jsonl"
    code, err = cli(capfd, "score", "--cross-encoder", tiny_ce, "--data", data, "--out", out)
    assert code == 0, err
    assert [len(json.loads(line)["scores"]) for line in out.read_text().splitlines()] == [1, 1, 1]


# 5 and 6. embed-nb train: --zero-stage without --strategy deepspeed; --resume with --overwrite


@pytest.fixture
def previous_run(tiny_model, tmp_path):
    "A config whose output_dir holds files of an earlier run."
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"weights of an earlier run")
    (out / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    cfg = run_config(tiny_model, out, train_dataset=str(EXAMPLES / "pairs.jsonl"), max_steps=1, batch_size=4)
    return write_yaml(tmp_path / "c.yaml", cfg), out


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--zero-stage", "3"], "--zero-stage applies to --strategy deepspeed, not ddp: "),
        (["--strategy", "fsdp", "--zero-stage", "1"], "--zero-stage applies to --strategy deepspeed, not fsdp: "),
        (["--resume", "--overwrite"], "--resume (resume_from_checkpoint) and --overwrite (overwrite_output_dir) "),
        (["--resume", "--set", "overwrite_output_dir=true"], "contradict each other: "),
    ],
)
def test_train_flags_that_would_be_ignored(flags, says, capfd, previous_run):
    cfg, out = previous_run
    before = contents(out)
    code, err = cli(capfd, "train", "--config", cfg, *flags)
    assert code == 2
    one_line(err, says)
    assert contents(out) == before


def test_zero_stage_under_accelerate_launch_with_deepspeed(monkeypatch, capfd, previous_run):
    "Under `accelerate launch` with a DeepSpeed config, its zero_stage is the one: --zero-stage is refused, not ignored."
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    code, err = cli(capfd, "train", "--config", previous_run[0], "--zero-stage", "3")
    assert code == 2
    one_line(err, "--zero-stage: under accelerate launch, set zero_stage in its DeepSpeed config instead")
