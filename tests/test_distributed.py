"""Several processes (CPU, gloo) train exactly as one process with the whole batch; without cross-device negatives
each process sees only its own; models saved by a multi-process run load as usual."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, accelerate_launch, assert_same_run, losses, max_change, needs_deepspeed, run_config
from conftest import weights, write_yaml
from sentence_transformers import SentenceTransformer

from embed_nb.train import launch, train

# torchrun and accelerate launch (29500), DeepSpeed: one test of this module at a time, none beside another such test
pytestmark = pytest.mark.xdist_group("fixed_port")


@pytest.fixture
def model(tiny_model_no_dropout):
    return tiny_model_no_dropout


def config(model, name, out, **kw):
    return run_config(model, out, name, **kw)


def run_of(out) -> dict:
    return json.loads((Path(out) / "run.json").read_text())


def split(strategy: str) -> tuple[str, int]:
    "A case's strategy and ZeRO stage: 'deepspeed2' -> ('deepspeed', 2); others at the default stage 2."
    return (strategy[:-1], int(strategy[-1])) if strategy[-1].isdigit() else (strategy, 2)


MRL = dict(use_mrl=True, mrl_dims=[8, 32])
# every extra of the contrastive loss at once: four directions, the false-negative mask, hardness weighting
RECIPE = dict(
    loss_directions=["query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc"],
    false_negative_margin=0.05,
    hardness_strength=2.0,
)
SYMMETRIC = dict(loss_directions=["query_to_doc", "doc_to_query"], loss_partition="per_direction")
CASES = [
    ("ddp", "pairs", RECIPE),
    ("fsdp", "hard_neg", {**MRL, **SYMMETRIC, "false_negative_margin": 0.0, "mask_hard_negatives": True}),
    ("ddp", "hard_neg", dict(use_mrl=True, mrl_dims=[8, 16, 32])),
    ("ddp", "pairs", {}),
    ("ddp", "scored", {}),
    ("ddp", "distill", dict(use_mrl=True, mrl_dims=[64, 384])),
    ("fsdp", "hard_neg", MRL),
    ("fsdp", "scored", {}),
] + [pytest.param(f"deepspeed{z}", "hard_neg", MRL, marks=needs_deepspeed) for z in (1, 2)]
# ZeRO-3 is not in this list: on CPU processes it hangs in its first step (launch refuses it without GPUs)


@pytest.mark.parametrize("strategy,name,extra", CASES)
def test_two_processes_equal_one(strategy, name, extra, model, tmp_path):
    "2 processes x 4 rows with cross-device negatives == 1 process x 8 rows: losses and final weights."
    strategy, zero_stage = split(strategy)
    train(config(model, name, tmp_path / "single", **extra))
    multi = config(model, name, tmp_path / "multi", batch_size=4, **extra)
    launch(multi, num_processes=2, strategy=strategy, zero_stage=zero_stage)
    run = run_of(tmp_path / "multi")
    assert (run["world_size"], run["strategy"], run["negatives_cross_device"]) == (2, strategy, True)
    assert_same_run(tmp_path / "single", tmp_path / "multi")
    moved = max_change(weights(model), weights(tmp_path / "multi" / "model"))
    assert moved > 1e-3  # the runs trained: equal weights are not just the untouched start
    if strategy == "ddp":
        assert run["replicas_max_abs_diff"] == 0.0


def test_unsynchronised_gradients_are_caught(model, tmp_path):
    "The check above fails when processes do not average gradients: skip DDP's all-reduce and compare again."
    import torch.nn.parallel.distributed as ddp_mod

    train(config(model, "pairs", tmp_path / "single"))
    original = ddp_mod.DistributedDataParallel.forward

    def no_sync_forward(self, *a, **k):
        with self.no_sync():
            return original(self, *a, **k)

    ddp_mod.DistributedDataParallel.forward = no_sync_forward  # forked processes inherit the patch
    try:
        launch(config(model, "pairs", tmp_path / "multi", batch_size=4), num_processes=2, strategy="ddp")
    finally:
        ddp_mod.DistributedDataParallel.forward = original
    with pytest.raises(AssertionError):
        assert_same_run(tmp_path / "single", tmp_path / "multi")
    assert run_of(tmp_path / "multi")["replicas_max_abs_diff"] > 0


def test_without_cross_device_each_process_sees_its_own_negatives(model, tmp_path):
    "Cross-device off: the first loss is the mean of each half's own loss; on: the loss of the whole batch."
    rows = (EXAMPLES / "pairs.jsonl").read_text().splitlines()[:8]
    for name, part in [("whole", rows), ("half0", rows[:4]), ("half1", rows[4:])]:
        (tmp_path / f"{name}.jsonl").write_text("\n".join(part) + "\n")

    def first_step(name, out, batch_size, **kw):
        data = str(tmp_path / f"{name}.jsonl")
        return config(
            model, "pairs", tmp_path / out, train_dataset=data, batch_size=batch_size, max_steps=1, shuffle=False, **kw
        )

    for name, bs in [("whole", 8), ("half0", 4), ("half1", 4)]:
        train(first_step(name, f"ref_{name}", bs))
    for cross in [False, True]:
        launch(first_step("whole", f"multi_{cross}", 4, negatives_cross_device=cross), num_processes=2)
    first = lambda out: losses(tmp_path / out)[0]
    own = (first("ref_half0") + first("ref_half1")) / 2
    assert abs(first("multi_False") - own) <= 1e-4 * own
    assert abs(first("multi_True") - first("ref_whole")) <= 1e-4 * first("ref_whole")
    assert abs(own - first("ref_whole")) > 1e-2  # the two really differ


def test_cli_num_processes(model, tmp_path):
    from embed_nb.cli import main

    cfg = write_yaml(tmp_path / "c.yaml", config(model, "pairs", tmp_path / "out", batch_size=4, max_steps=2))
    assert main(["train", "--config", str(cfg), "--num-processes", "2", "--strategy", "ddp"]) == 0
    assert run_of(tmp_path / "out")["world_size"] == 2
    assert SentenceTransformer(str(tmp_path / "out" / "model"), device="cpu").encode(["x"]).shape == (1, 32)


@needs_deepspeed
def test_zero3_on_cpu_is_refused_clearly(model, tmp_path):
    from embed_nb.core import ConfigError

    if torch.cuda.is_available():
        pytest.skip("GPU machine")
    with pytest.raises(ConfigError, match="ZeRO-3"):
        launch(config(model, "pairs", tmp_path), num_processes=2, strategy="deepspeed", zero_stage=3)


def test_torchrun_entry_point(model, tmp_path):
    "Launchers that start the processes themselves (torchrun, accelerate launch on GPUs) run `-m embed_nb.train`."
    cfg = write_yaml(tmp_path / "c.yaml", config(model, "pairs", tmp_path / "out", batch_size=4, max_steps=2))
    exe = Path(sys.executable).parent / "torchrun"
    r = subprocess.run(
        [str(exe), "--nproc_per_node", "2", "-m", "embed_nb.train", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ACCELERATE_USE_CPU": "true"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_of(tmp_path / "out")
    assert run["world_size"] == 2 and run["negatives_cross_device"] and run["replicas_max_abs_diff"] == 0.0


def node_command(launcher: str, rank: int, cfg, *extra, port: int = 29500) -> tuple[list[str], dict]:
    """The command (and its environment) a node runs to join a two-node run of one process each, the first node on
    127.0.0.1:`port`: the README's multi-node recipes with 1 process a node. "slurm": `example_data/slurm/node.sh`, which
    `srun` starts on each node, with the variables SLURM and `train.sbatch` set (no SLURM here)."""
    exe = Path(sys.executable).parent
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        cmd = [str(exe / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    elif launcher == "accelerate":  # accelerate's launcher for several machines; --num_processes counts all of them
        cmd = [str(exe / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank)]
        cmd += ["--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    else:
        env.update(SLURM_NNODES="2", SLURM_NODEID=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env["GPUS_PER_NODE"] = "1"
        env["PATH"] = f"{exe}{os.pathsep}{env.get('PATH', '')}"
        return ["bash", str(EXAMPLES / "slurm" / "node.sh"), str(cfg), *extra], env
    return cmd + ["-m", "embed_nb.train", "--config", str(cfg), *extra], env


def start_nodes(launcher: str, cfg, *extra, port: int | None = None) -> list[subprocess.Popen]:
    "Both nodes' commands, started; on a port free now (29500 may still be held by the sockets of a run just before)."
    from accelerate.utils.other import get_free_port

    port, nodes = port or int(get_free_port()), []
    for rank in (0, 1):
        cmd, env = node_command(launcher, rank, cfg, *extra, port=port)
        opts = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        nodes.append(subprocess.Popen(cmd, **opts))
    return nodes


def finish(nodes) -> list[tuple[str, str]]:
    said = [p.communicate(timeout=300) for p in nodes]
    why = lambda err: [line for line in err.splitlines() if "rror" in line or "failed" in line][-12:]
    assert [p.returncode for p in nodes] == [0, 0], [why(err) for _, err in said]
    return said


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes_equal_one_process(model, launcher, tmp_path):
    """Two launchers, as on two nodes (one process each, node rank 0 and 1, rendezvous on 127.0.0.1, one shared
    output_dir), by `torchrun --nnodes 2` and by `accelerate launch --num_machines 2`: the same run as one process with
    the whole batch, one log, one model, said once."""
    train(config(model, "hard_neg", tmp_path / "single", **MRL))
    cfg = write_yaml(tmp_path / "c.yaml", config(model, "hard_neg", tmp_path / "nodes", batch_size=4, **MRL))
    said = finish(start_nodes(launcher, cfg))
    run = run_of(tmp_path / "nodes")
    assert (run["world_size"], run["negatives_cross_device"], run["replicas_max_abs_diff"]) == (2, True, 0.0)
    assert_same_run(tmp_path / "single", tmp_path / "nodes")
    assert [out.count("model saved in") for out, _ in said] == [1, 0]  # said once, by the first node's process


def test_two_nodes_killed_and_resumed(model, tmp_path):
    """A two-node run started by `example_data/slurm/node.sh` on each "node" (as `srun` does), both killed (kill -9,
    every process of each) after the first checkpoint, then started again the same way (as a requeued job is): it goes
    on from that checkpoint and ends as one process with the whole batch does."""
    from test_reliability import kill_all

    steps = dict(max_steps=12, **MRL)  # the kill comes 8 steps before the end
    train(config(model, "hard_neg", tmp_path / "single", **steps))
    out = tmp_path / "nodes"
    cfg = write_yaml(tmp_path / "c.yaml", config(model, "hard_neg", out, batch_size=4, save_steps=4, **steps))
    nodes = start_nodes("slurm", cfg)
    deadline = time.time() + 300
    while not (out / "checkpoint-step-4" / "embed_nb.json").is_file() and all(p.poll() is None for p in nodes):
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    alive = [p.poll() is None for p in nodes]
    for p in nodes:
        kill_all(p.pid)
    said = [p.communicate()[1] for p in nodes]
    assert alive == [True, True], [line for err in said for line in err.splitlines() if "rror" in line][-12:]
    assert not (out / "model").exists(), "the run ended before it was killed"
    finish(start_nodes("slurm", cfg))  # on another free port, as a requeued job may be
    run = run_of(out)
    assert run["world_size"] == 2 and run["resumed"][0]["step"] >= 4, run.get("resumed")
    assert_same_run(tmp_path / "single", out)


def test_spec_fsdp_config_names_the_models_layers_and_is_refused_clearly_on_cpu(model, tmp_path):
    """The spec's `accelerate launch --config_file default_fsdp.yaml -m embed_nb.train`: the yaml's layer class is the
    model's; on a machine without GPUs accelerate's FSDP plugin cannot start, and the run says so in one line."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from embed_nb.distributed import transformer_layer_classes
    from embed_nb.model import Embedding

    spec = EXAMPLES / "accelerate" / "default_fsdp.yaml"
    assert load_config_from_file(str(spec)).distributed_type.value == "FSDP"
    layer = yaml.safe_load(spec.read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    assert layer in transformer_layer_classes(Embedding.from_pretrained(model))
    if torch.cuda.is_available():
        pytest.skip("GPU machine: bench/gpu_check.sh runs this path")
    cfg = write_yaml(tmp_path / "c.yaml", config(model, "pairs", tmp_path / "out", batch_size=4, max_steps=2))
    r = accelerate_launch(spec, cfg, "--num_processes", 1)
    refused = "embed-nb: error: the accelerate config asks for FSDP, which accelerate runs only on GPUs"
    assert r.returncode != 0 and refused in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "out").exists()  # refused before anything was written


@needs_deepspeed
def test_spec_deepspeed_config_matches_the_plugin_embed_nb_builds():
    """`launch(..., strategy="deepspeed")` gives DeepSpeed the spec yaml's ZeRO stage and clipping (the config's
    default max_grad_norm), and fills the batch sizes the yaml leaves "auto" from the config and the number of
    processes."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from embed_nb.core import TrainConfig
    from embed_nb.distributed import accelerator_kwargs

    spec = EXAMPLES / "accelerate" / "deepspeed_zero2.yaml"
    assert load_config_from_file(str(spec)).distributed_type.value == "DEEPSPEED"
    ds = yaml.safe_load(spec.read_text())["deepspeed_config"]
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    plugin = lambda cfg, **kw: accelerator_kwargs(cfg, "deepspeed", **kw)["deepspeed_plugin"]
    built = plugin(TrainConfig(batch_size=4, gradient_accumulation_steps=3), world_size=2)  # launch's default stage
    conf = built.deepspeed_config
    assert built.zero_stage == conf["zero_optimization"]["stage"] == ds["zero_stage"]
    assert conf["gradient_clipping"] == ds["gradient_clipping"]
    assert (conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"]) == (4, 3)
    assert conf["train_batch_size"] == 4 * 3 * 2  # rows per optimizer step, over the processes
    # the values follow the config: clipping is max_grad_norm (none: 0), ZeRO-3 gathers the weights to save them
    other = plugin(TrainConfig(batch_size=5, max_grad_norm=0.5), zero_stage=3)
    conf = other.deepspeed_config
    assert (other.zero_stage, conf["gradient_clipping"], conf["train_batch_size"]) == (3, 0.5, 5)
    assert conf["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin(TrainConfig(max_grad_norm=None), zero_stage=1).deepspeed_config["gradient_clipping"] == 0.0


@needs_deepspeed
@pytest.mark.parametrize("num_processes,zero_stage", [(1, 2), (2, 2), (1, 3)])
def test_spec_deepspeed_yaml_through_accelerate_launch(model, tmp_path, num_processes, zero_stage):
    """The spec's `accelerate launch --config_file deepspeed_zero2.yaml -m embed_nb.train` on CPU processes: its "auto"
    values are filled from the config, the run equals one process with the whole batch, and the saved model (Matryoshka
    Dense head included) loads in plain sentence-transformers."""
    train(config(model, "hard_neg", tmp_path / "single", **MRL))
    multi = config(model, "hard_neg", tmp_path / "multi", batch_size=8 // num_processes, **MRL)
    cfg = write_yaml(tmp_path / "c.yaml", multi)
    spec = EXAMPLES / "accelerate" / "deepspeed_zero2.yaml"
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    r = accelerate_launch(
        spec, cfg, "--num_processes", num_processes, "--zero_stage", zero_stage, env=env, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_of(tmp_path / "multi")
    assert (run["world_size"], run["distributed_type"]) == (num_processes, "DEEPSPEED")
    filled = run["deepspeed_config"]  # the yaml's "auto" values, as the run used them
    assert (filled["train_micro_batch_size_per_gpu"], filled["zero_optimization"]["stage"]) == (
        8 // num_processes,
        zero_stage,
    )
    assert_same_run(tmp_path / "single", tmp_path / "multi")
    st = SentenceTransformer(str(tmp_path / "multi" / "model"), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense"] and st.encode(["x"]).shape == (1, 32)


@pytest.mark.parametrize(
    "strategy",
    ["fsdp"] + [pytest.param(f"deepspeed{z}", marks=needs_deepspeed) for z in (1, 2, 3)],
)
def test_one_process_that_shards_equals_plain_training(model, tmp_path, strategy):
    """`launch(num_processes=1, strategy=...)` runs the strategy (a group of one process), and trains as plain `train`
    does."""
    strategy, zero_stage = split(strategy)
    train(config(model, "hard_neg", tmp_path / "single", **MRL))
    launch(
        config(model, "hard_neg", tmp_path / "one", **MRL), num_processes=1, strategy=strategy, zero_stage=zero_stage
    )
    run = run_of(tmp_path / "one")
    assert (run["world_size"], run["strategy"]) == (1, strategy)
    # FSDP is sharded by hand over a group of one process: accelerate sees a multi-process set-up of one process
    # (bench/results/gpu_check.md: launch() fsdp on one GPU ran as MULTI_GPU)
    multi = "MULTI_GPU" if torch.cuda.is_available() else "MULTI_CPU"
    assert run["distributed_type"] == {"deepspeed": "DEEPSPEED", "fsdp": multi}[strategy]
    assert_same_run(tmp_path / "single", tmp_path / "one")


@needs_deepspeed
def test_zero3_in_bf16_with_a_matryoshka_head(model, tmp_path):
    """ZeRO-3 in bf16 with the Dense head embed_nb adds: the head used to be the one float32 module among bf16
    partitions."""
    cfg = config(model, "hard_neg", tmp_path / "z3", **MRL)
    launch(cfg, num_processes=1, strategy="deepspeed", zero_stage=3, mixed_precision="bf16")
    assert np.isfinite(losses(tmp_path / "z3")).all()
    st = SentenceTransformer(str(tmp_path / "z3" / "model"), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense"] and st.encode(["x"]).shape == (1, 32)
