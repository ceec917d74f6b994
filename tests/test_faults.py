"""Faults found by trying bad inputs as a user and a tester would (a second round): a failing run never changes a file
that existed before it, `--resume` never trains on other data and never stops at a damaged checkpoint when an older
whole one exists, and each mistake is one line. Tiny models, 12 rows, a few steps each."""

import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_config, write_yaml

from embed_nb.cli import main
from embed_nb.train import train

ROWS = (EXAMPLES / "hard_neg.jsonl").read_text().splitlines()[:12]


@pytest.fixture
def data(tmp_path):
    "12 hard-negative rows of the example data."
    (tmp_path / "train.jsonl").write_text("\n".join(ROWS) + "\n")
    return tmp_path / "train.jsonl"


def config(tiny_model, data, out, **kw) -> dict:
    "A 4-step run of batch 4 on `data` (lengths 32), a checkpoint every step, 3 kept."
    base = run_config(tiny_model, out, train_dataset=str(data), batch_size=4, neg_nums=None, max_steps=4)
    return {**base, "query_max_len": 32, "passage_max_len": 32, "save_steps": 1, "num_max_checkpoints": 3, **kw}


def cli(tmp_path, cfg: dict, *options) -> tuple[int, str, str]:
    "`embed-nb train --config <cfg> [options]` in this process: (exit code, stdout, stderr)."
    path = write_yaml(tmp_path / "run.yaml", cfg)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--config", str(path), *options])
    return code, out.getvalue(), err.getvalue()


def files(folder) -> dict:
    "Every file under `folder` (hidden ones too) and its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def one_line(err: str, start: str = "embed-nb: error: "):
    assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err, err


def stop_at(step: int):
    "A callback that stops the run (as a kill would, between two steps) once step `step` is logged."

    def cb(record):
        if record.get("step") == step and "loss" in record:
            raise KeyboardInterrupt

    return cb


def stopped_run(tiny_model, data, out) -> dict:
    "A run of 4 steps stopped at its last (before saving its model), with checkpoints of steps 1-3: its config."
    cfg = config(tiny_model, data, out)
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
        train(cfg, callbacks=[stop_at(4)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-step-{i}" for i in (1, 2, 3)]
    return cfg


@pytest.mark.parametrize("mistake", ["missing model", "mrl_weights", "lone surrogate"])
def test_overwrite_keeps_the_old_run_when_the_new_one_fails(mistake, tiny_model, data, tmp_path):
    out = tmp_path / "out"
    good = config(tiny_model, data, out, max_steps=2)
    assert cli(tmp_path, good)[0] == 0
    before = files(out)
    bad = dict(good)
    if mistake == "missing model":
        bad["model_name_or_path"] = str(tmp_path / "missing")
    elif mistake == "mrl_weights":
        bad.update(use_mrl=True, mrl_dims=[8, 16], mrl_weights=[1.0])
    else:
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join(ROWS[:3]) + '\n{"query": "\\ud800 x", "pos": ["p"], "neg": ["n"]}\n')
        bad["train_dataset"] = str(broken)
    code, _, err = cli(tmp_path, bad, "--overwrite")
    assert code == 2
    one_line(err)
    assert files(out) == before  # the finished run as it was: nothing deleted, nothing added


def test_overwrite_replaces_the_old_run_once_a_step_is_trained(tiny_model, data, tmp_path):
    out = tmp_path / "out"
    cfg = config(tiny_model, data, out, max_steps=2)
    assert cli(tmp_path, cfg)[0] == 0
    first = json.loads((out / "run.json").read_text())["run_id"]
    assert cli(tmp_path, cfg, "--overwrite")[0] == 0
    assert json.loads((out / "run.json").read_text())["run_id"] != first
    assert not (out / ".previous-run").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-step-1"]  # only the new run's


def test_an_overwrite_killed_before_its_first_step_is_undone(tiny_model, data, tmp_path):
    "A process that set the old run aside and died before a step: the next command on the folder puts it back."
    out = tmp_path / "out"
    cfg = config(tiny_model, data, out, max_steps=2)
    assert cli(tmp_path, cfg)[0] == 0
    before = files(out)
    claim = (
        "import os; from embed_nb.core import load_config; from embed_nb.run_folder import claim_output; "
        f"claim_output(load_config({{**{cfg!r}, 'overwrite_output_dir': True}})); os._exit(9)"
    )
    r = subprocess.run([sys.executable, "-c", claim], capture_output=True, text=True, timeout=300)
    assert r.returncode == 9 and (out / ".previous-run").is_dir() and not (out / "model").exists(), r.stderr
    code, said, _ = cli(tmp_path, cfg, "--resume")
    assert code == 0 and "put back the run" in said and "holds a finished run: nothing to resume" in said, said
    assert files(out) == before


def test_resume_refuses_data_that_changed(tiny_model, data, tmp_path):
    out = tmp_path / "out"
    cfg = stopped_run(tiny_model, data, out)
    before = files(out)
    for changed in [
        "\n".join(ROWS[:4]) + "\n",
        "\n".join(ROWS[::-1]) + "\n",
    ]:  # cut to 4 rows; the same rows reordered
        data.write_text(changed)
        code, _, err = cli(tmp_path, cfg, "--resume")
        assert code == 2 and "the data changed since" in err and str(data) in err, err
        one_line(err)
        assert files(out) == before
    data.write_text("\n".join(ROWS) + "\n")  # put back (a new modification time, the same bytes): it resumes
    code, _, err = cli(tmp_path, cfg, "--resume")
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["resumed"][-1]["step"] == 3


def test_resume_on_changed_data_when_told(tiny_model, data, tmp_path):
    out = tmp_path / "out"
    cfg = stopped_run(tiny_model, data, out)
    data.write_text("\n".join(ROWS[::-1]) + "\n")
    code, _, err = cli(tmp_path, {**cfg, "resume_changed_data": True}, "--resume")
    assert code == 0, err
    assert (out / "model").is_dir()


DAMAGE = {  # what is damaged in the newest checkpoint → how
    "trainer_state/model.safetensors": "truncate",
    "trainer_state/progress.json": "garbage",
    "trainer_state/optimizer.bin": "truncate",
    "trainer_state/rank_0.pt": "truncate",
    "embed_nb.json": "garbage",
    "progress.json empty": "empty",
    "run.json": "garbage",
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_resume_passes_over_a_damaged_checkpoint(what, tiny_model, data, tmp_path):
    out = tmp_path / "out"
    cfg = stopped_run(tiny_model, data, out)
    name = "trainer_state/progress.json" if what == "progress.json empty" else what
    target = out / name if name == "run.json" else out / "checkpoint-step-3" / name
    whole = target.read_bytes()
    target.write_bytes({"truncate": whole[: len(whole) // 2], "garbage": b"{not json", "empty": b""}[DAMAGE[what]])
    code, said, err = cli(tmp_path, cfg, "--resume")
    assert code == 0, err
    resumed = json.loads((out / "run.json").read_text())["resumed"][-1]
    if name == "run.json":  # the run's description is damaged, not a checkpoint: the newest one resumes
        assert resumed["step"] == 3
    else:
        assert resumed["step"] == 2 and "resuming from checkpoint-step-2" in said and "checkpoint-step-3 (" in said
    assert (out / "model").is_dir()


def test_resume_with_every_checkpoint_damaged_is_one_line(tiny_model, data, tmp_path):
    out = tmp_path / "out"
    cfg = stopped_run(tiny_model, data, out)
    for ck in out.glob("checkpoint-*"):
        (ck / "trainer_state" / "progress.json").write_text("")
    before = files(out)
    code, _, err = cli(tmp_path, cfg, "--resume")
    assert code == 2 and "no checkpoint in" in err and "can be resumed" in err, err
    one_line(err)
    assert files(out) == before


def test_resume_with_nothing_to_resume_says_so(tiny_model, data, tmp_path):
    code, said, err = cli(tmp_path, config(tiny_model, data, tmp_path / "typo", max_steps=1), "--resume")
    assert code == 0, err
    assert "holds no run to resume from: starting afresh" in said


def test_a_save_that_hits_the_file_size_limit_is_one_line(tiny_model, data, tmp_path):
    "`ulimit -f`: the write fails (EFBIG; Python ignores SIGXFSZ), the run stops in one line, no half-written folder."
    out = tmp_path / "out"
    path = write_yaml(tmp_path / "run.yaml", config(tiny_model, data, out))
    model = max(p.stat().st_size for p in Path(tiny_model).rglob("*") if p.is_file())
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (model // 2, model // 2))
    r = subprocess.run(
        [str(Path(sys.executable).parent / "embed-nb"), "train", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("embed-nb: stopped: could not save checkpoint-step-1 in"), r.stderr
    assert "Traceback" not in r.stderr
    assert not list(out.glob(".checkpoint-*")) and not list(out.glob("checkpoint-*"))


def test_silent_settings_are_said(tiny_model, data, tmp_path):
    out = tmp_path / "out"
    cfg = config(tiny_model, data, out, max_steps=1, mrl_dims=[8, 16], neg_nums=24, mixed_precision="fp16")
    code, said, err = cli(tmp_path, cfg)
    assert code == 0, err
    assert "mrl_dims [8, 16] is set but use_mrl is false" in said
    assert "neg_nums 24: no line holds more than 6 negatives, so each is repeated about 4x a step" in said
    assert "mixed_precision: fp16: this machine has no GPU" in said
    run = json.loads((out / "run.json").read_text())
    assert run["mixed_precision"] == run["config"]["mixed_precision"] == "no"  # what ran


def test_resume_of_a_finished_run_in_a_read_only_folder(tiny_model, data, tmp_path):
    "A retry of a finished run in a folder it may read but not change: nothing to do, said so, no traceback."
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: run without the powers that let it
        if not shutil.which("setpriv"):
            pytest.skip("root writes in any folder, and setpriv is not here to drop that power")
        caps = "-dac_override,-dac_read_search,-fowner"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    out = tmp_path / "out"
    cfg = config(tiny_model, data, out, max_steps=1)
    assert cli(tmp_path, cfg)[0] == 0
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))  # stale
    path = write_yaml(tmp_path / "resume.yaml", {**cfg, "resume_from_checkpoint": "auto"})
    out.chmod(0o555)
    try:
        r = subprocess.run(
            prefix + [sys.executable, "-m", "embed_nb.cli", "train", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        out.chmod(0o755)
    assert r.returncode == 0 and "nothing to resume" in r.stdout and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (out / ".lock").exists()  # it could not be removed, and that is no error


def test_an_unknown_key_other_trainers_use_names_ours(tmp_path):
    cfg = {"train_dataset": "x.jsonl", "learning_rate": 1e-4}
    code, _, err = cli(tmp_path, cfg)
    assert code == 2 and "unknown key 'learning_rate' (embed_nb calls it lr)" in err, err
    one_line(err)


def test_data_that_is_a_folder_or_a_link_loop(tiny_model, tmp_path):
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    for path, problem in [
        (tmp_path, "is a folder, not a file"),
        (tmp_path / "loop.jsonl", "is a symbolic link in a loop"),
    ]:
        code, _, err = cli(tmp_path, config(tiny_model, path, tmp_path / "out"))
        assert code == 2 and f"{path}: {problem}" in err, err
        one_line(err)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
