"""What a run leaves on disk: killed at any moment (kill -9, during saves too) and resumed, it ends bitwise where an
uninterrupted run ends, for one process and for two; a nan loss stops it without saving a model; a second run into the
same output_dir refuses; SIGINT saves a checkpoint and exits 130; the entry points return their exit codes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, log_records, needs_deepspeed, run_config, weights, write_yaml

PY, BIN = sys.executable, Path(sys.executable).parent
# the number of kill -9 points of the one-process test (EMBED_NB_KILLS=40 for a longer hunt)
KILLS = int(os.environ.get("EMBED_NB_KILLS", 20))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "48 hard-negative rows: 12 steps an epoch at batch 4."
    d = tmp_path_factory.mktemp("data")
    lines = (EXAMPLES / "hard_neg.jsonl").read_text().splitlines()[:48]
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    return d / "train.jsonl"


def write_config(path, model, data, out, **kw):
    "A run of whole epochs (two of 12 steps) on `data`, a checkpoint each step (3 kept), written as a yaml config."
    cfg = run_config(
        model,
        out,
        train_dataset=str(data),
        neg_nums=1,
        batch_size=4,
        query_max_len=32,
        passage_max_len=32,
        epochs=2,
        max_steps=None,
        lr=1e-3,
        warmup_proportion=0.1,
        log_interval=2,
        save_steps=1,
        save_on_epoch_end=True,
        num_max_checkpoints=3,
        use_mrl=True,
        mrl_dims=[8, 32],
        seed=3,
    )
    return write_yaml(path, {**cfg, **kw})


def train_cmd(config, *extra):
    return [PY, "-m", "embed_nb.train", "--config", str(config), *extra]


def run_ok(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def records(out):
    "log.jsonl without what differs between two runs of the same training: timings and the run's id."
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "eval_s", "run")} for r in log_records(out)]


def assert_same_end(a, b, extra=()):
    "Run `a` (killed and resumed) ends as `b` did: weights, log and checkpoints (plus the `extra` a stop saved)."
    wa, wb = weights(Path(a) / "model"), weights(Path(b) / "model")
    assert wa.keys() == wb.keys() and len(wa) > 10
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]
    assert records(a) == records(b)
    assert sorted(p.name for p in Path(a).glob("checkpoint-*")) == sorted(
        [*extra, *(p.name for p in Path(b).glob("checkpoint-*"))]
    )
    assert not list(Path(a).glob(".*tmp*")) and not (Path(a) / ".lock").exists()


def check_consistent(out):
    "What a killed run left: every visible checkpoint and model complete and loadable; never a half-written folder."
    from sentence_transformers import SentenceTransformer

    for folder in [*Path(out).glob("checkpoint-*"), Path(out) / "model"]:
        if folder.exists():
            assert not (folder / "INCOMPLETE").exists() and (folder / "embed_nb.json").is_file(), folder
            SentenceTransformer(str(folder), device="cpu")
    if (Path(out) / "run.json").exists():
        json.loads((Path(out) / "run.json").read_text())  # whole, never half-written


def kill_all(pid):
    "kill -9 `pid` and all under it, as a machine dying does: frozen first, so that none spawns a process and escapes."
    frozen = set()
    for _ in range(4):
        for p in _tree(pid) - frozen:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            frozen.add(p)
        time.sleep(0.02)
    for p in frozen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tree(pid) -> set:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], set()
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += children.get(p, [])
    return tree


def timeline(plain, seconds, kills):
    """(start-up time, training time per kill) of a run that took `seconds` and wrote `plain/log.jsonl`. Every
    other kill comes a random moment within that share after a checkpoint: over all the kills about a quarter of the
    training, plus a step a kill, which leaves the run enough steps for the kills (twice that share once ran out at
    kill 19 of 20)."""
    training = log_records(plain)[-1]["elapsed_s"]
    return seconds - training, training / kills


def fresh_save(out, since, pattern=".checkpoint-*.tmp"):
    "Whether a checkpoint (by default its temporary folder) made after `since` is there (a killed run's is not)."
    for p in Path(out).glob(pattern):
        try:
            if p.stat().st_mtime >= since:
                return True
        except OSError:
            pass
    return False


def near_end(out) -> bool:
    "Whether the run in `out` has logged a step within 2 of its last (on a loaded machine a sleep may overshoot it)."
    try:
        total = json.loads((Path(out) / "run.json").read_text())["optimizer_steps"]
        return json.loads((Path(out) / "log.jsonl").read_text().splitlines()[-1])["step"] >= total - 2
    except (OSError, ValueError, IndexError, KeyError):
        return False


def kill_and_resume(cmd, out, kills, rng, timeline, env=None):
    """Start `cmd`, kill -9 it and its processes at a random moment (or just as a save begins), check what it left,
    start it again with --resume; until it finishes. Returns how many times it was killed."""
    startup, share = timeline
    killed, first = 0, True
    while True:
        p = subprocess.Popen(
            cmd + ([] if first else ["--set", "resume_from_checkpoint=auto"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        first = False
        if killed < kills:
            start, mode = time.time(), killed % 4
            if mode == 0:  # while it starts (imports, loading, claiming the folder): well before a slow start ends,
                # or, where this start is quicker than the measured one (caches warm), as its first checkpoint appears
                deadline = start + rng.uniform(0, 0.5 * startup)
                while p.poll() is None and time.time() < deadline and not fresh_save(out, start, "checkpoint-*"):
                    time.sleep(0.002)
            else:  # as a save begins (a checkpoint's temporary folder appears), or a random moment after one is saved
                pattern = ".checkpoint-*.tmp" if mode == 1 else "checkpoint-*"
                while p.poll() is None and not fresh_save(out, start, pattern) and time.time() - start < 120:
                    time.sleep(0.002)
                if mode > 1:  # cut short as the run nears its end: a kill while it winds down would test no resume
                    deadline = time.time() + rng.uniform(0, share)
                    while p.poll() is None and time.time() < deadline and not near_end(out):
                        time.sleep(0.005)
            if p.poll() is None:
                kill_all(p.pid)
                p.wait()
                time.sleep(0.2)  # the workers' exit
                killed += 1
                check_consistent(out)
                continue
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        return killed


def test_kill_9_at_random_points_then_resume_is_bitwise(tiny_model, data, tmp_path):
    plain = tmp_path / "plain"
    start = time.time()
    run_ok(train_cmd(write_config(tmp_path / "plain.yaml", tiny_model, data, plain, epochs=3)))
    whole = time.time() - start
    out = tmp_path / "killed"
    killed = kill_and_resume(
        train_cmd(write_config(tmp_path / "k.yaml", tiny_model, data, out, epochs=3)),
        out,
        KILLS,
        random.Random(0),
        timeline(plain, whole, KILLS),
    )
    assert killed >= KILLS
    assert_same_end(out, plain)
    assert len(json.loads((out / "run.json").read_text())["resumed"]) >= KILLS // 4  # it went on from checkpoints


@pytest.mark.xdist_group("fixed_port")  # torchrun
def test_two_processes_killed_and_resumed_are_bitwise(tiny_model, data, tmp_path):
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "embed_nb.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = tmp_path / "plain"
    start = time.time()
    run_ok(
        torchrun + ["--config", str(write_config(tmp_path / "p.yaml", tiny_model, data, plain, batch_size=2))], env=env
    )
    whole = time.time() - start
    out = tmp_path / "killed"
    cmd = torchrun + ["--config", str(write_config(tmp_path / "k.yaml", tiny_model, data, out, batch_size=2))]
    assert kill_and_resume(cmd, out, 3, random.Random(1), timeline(plain, whole, 3), env=env) >= 3
    run = json.loads((plain / "run.json").read_text())  # bare torchrun on CPUs: connected by DDP, replicas in step
    assert (run["world_size"], run["distributed_type"], run["replicas_max_abs_diff"]) == (2, "MULTI_CPU", 0.0)
    assert json.loads((out / "run.json").read_text()).get("resumed")
    assert_same_end(out, plain)


@needs_deepspeed
def test_deepspeed_zero2_two_processes_killed_and_resumed_are_bitwise(tiny_model, data, tmp_path):
    cli = [str(BIN / "embed-nb"), "train", "--num-processes", "2", "--strategy", "deepspeed", "--zero-stage", "2"]
    plain = tmp_path / "plain"
    start = time.time()
    run_ok(cli + ["--config", str(write_config(tmp_path / "p.yaml", tiny_model, data, plain, batch_size=2))])
    whole = time.time() - start
    out = tmp_path / "killed"
    cmd = cli + ["--config", str(write_config(tmp_path / "k.yaml", tiny_model, data, out, batch_size=2))]
    assert kill_and_resume(cmd, out, 3, random.Random(2), timeline(plain, whole, 3)) >= 3
    assert json.loads((plain / "run.json").read_text())["distributed_type"] == "DEEPSPEED"
    assert json.loads((out / "run.json").read_text()).get("resumed")
    assert_same_end(out, plain)


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_bitwise(tiny_model, data, tmp_path):
    plain = tmp_path / "plain"
    run_ok(train_cmd(write_config(tmp_path / "p.yaml", tiny_model, data, plain, save_steps=None)))
    out = tmp_path / "stopped"
    cfg = write_config(tmp_path / "s.yaml", tiny_model, data, out, save_steps=None)
    p = subprocess.Popen(train_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith("embed-nb: stopped: stopped by SIGINT at step")]
    assert line and "Traceback" not in err, err[-3000:]
    assert "stopped" in json.loads((out / "run.json").read_text())
    # the same command again refuses to overwrite the stopped run, then --resume goes on
    r = subprocess.run(train_cmd(cfg), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "holds an unfinished run" in r.stderr
    run_ok([str(BIN / "embed-nb"), "train", "--config", str(cfg), "--resume"])
    step = int(line[0].split("at step ")[1].split(":")[0])
    assert_same_end(out, plain, [f"checkpoint-step-{step}"])  # the checkpoint the stop saved stays


def test_nan_stops_without_saving_a_model(tiny_model, data, tmp_path):
    out = tmp_path / "nan"
    cfg = write_config(
        tmp_path / "n.yaml",
        tiny_model,
        data,
        out,
        lr=1e4,
        save_steps=None,
        max_steps=6,
        log_interval=3,
        epochs=1,
        use_mrl=False,
        mrl_dims=None,
    )
    r = subprocess.run(
        [str(BIN / "embed-nb"), "train", "--config", str(cfg), "--set", "max_grad_norm=null"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("embed-nb: stopped: step ") and "became nan or inf" in last and "Traceback" not in r.stderr
    assert not (out / "model").exists() and not (out / ".lock").exists()
    assert "nan" not in (out / "log.jsonl").read_text().lower()  # the non-finite loss was never logged
    # a model with nan weights saved some other way: eval refuses it
    from embed_nb.model import Embedding

    m = Embedding.from_pretrained(tiny_model)
    with torch.no_grad():
        next(m.parameters()).fill_(float("nan"))
    m.model.save(str(tmp_path / "nan_model"))
    r = subprocess.run(
        [str(BIN / "embed-nb"), "eval", "--model", str(tmp_path / "nan_model"), "--data", str(EXAMPLES / "eval")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "holds non-finite weights" in r.stderr, r.stderr[-2000:]


def test_output_dir_is_never_trained_into_twice(tiny_model, data, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_model, data, out, save_steps=None, epochs=1, max_steps=2)
    busy = write_config(tmp_path / "busy.yaml", tiny_model, data, out, save_steps=None, epochs=50)
    p = subprocess.Popen(train_cmd(busy), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / ".lock").exists():
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.01)
    r = subprocess.run(
        train_cmd(cfg, "--set", "overwrite_output_dir=true"), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and "is in use by a run going on" in r.stderr, r.stderr[-2000:]
    os.kill(p.pid, signal.SIGKILL)  # a dead run's lock is stale
    p.wait()
    run_ok(train_cmd(cfg, "--set", "overwrite_output_dir=true"))
    first = weights(out / "model")
    r = subprocess.run(train_cmd(cfg), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "holds a finished run" in r.stderr, r.stderr[-2000:]
    # --resume of a finished run (a retry loop's second try, say) has nothing to do, and says so
    r = subprocess.run(
        train_cmd(cfg, "--set", "resume_from_checkpoint=auto"), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "holds a finished run: nothing to resume" in r.stdout, r.stderr[-2000:]
    assert all(torch.equal(v, weights(out / "model")[k]) for k, v in first.items())  # the finished model untouched
    # a file where the model goes fails before training, not after
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "model").write_text("")
    r = subprocess.run(
        train_cmd(cfg, "--set", f"output_dir={tmp_path / 'f'}"), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and "is a file, where the run would save its model" in r.stderr
    assert not (tmp_path / "f" / "log.jsonl").exists()


def test_checkpoint_rotation_deletes_only_this_runs_checkpoints(tiny_model, data, tmp_path):
    a = tmp_path / "a"
    run_ok(train_cmd(write_config(tmp_path / "a.yaml", tiny_model, data, a, save_steps=None, num_max_checkpoints=2)))
    assert sorted(p.name for p in a.glob("checkpoint-*")) == ["checkpoint-epoch-1", "checkpoint-epoch-2"]
    b = tmp_path / "b"  # goes on from a's first epoch, in a folder holding another run's checkpoint
    foreign = b / "checkpoint-epoch-7"
    foreign.parent.mkdir()
    (a / "checkpoint-epoch-2").rename(foreign)
    meta = json.loads((foreign / "embed_nb.json").read_text())
    (foreign / "embed_nb.json").write_text(json.dumps({**meta, "run_id": "another"}))
    run_ok(
        train_cmd(
            write_config(
                tmp_path / "b.yaml",
                tiny_model,
                data,
                b,
                save_steps=None,
                num_max_checkpoints=1,
                resume_from_checkpoint=str(a / "checkpoint-epoch-1"),
            )
        )
    )
    assert sorted(p.name for p in b.glob("checkpoint-*")) == ["checkpoint-epoch-2", "checkpoint-epoch-7"]
    assert json.loads((b / "run.json").read_text())["resumed"][0]["step"] == 12


@pytest.mark.xdist_group("fixed_port")  # accelerate launch
def test_module_entry_point_returns_its_exit_code(tmp_path):
    (tmp_path / "bad.yaml").write_text("train_dataset: nowhere.jsonl\nbatchsize: 3\n")
    for cmd in (
        [PY, "-m", "embed_nb.train"],
        [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", "-m", "embed_nb.train"],
    ):
        r = subprocess.run(cmd + ["--config", str(tmp_path / "bad.yaml")], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "unknown key 'batchsize'" in r.stderr, (cmd, r.returncode, r.stderr[-2000:])
        if cmd[1] == "-m":
            assert r.returncode == 2
