"""Several processes (CPU, gloo) train exactly as one process with the whole batch; without cross-device negatives
each process sees only its own; models saved by a multi-process run load as usual."""
import importlib.util, json
from pathlib import Path
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from embed_nb.train import train, launch
from conftest import EXAMPLES

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

@pytest.fixture
def model(tiny_model_no_dropout): return tiny_model_no_dropout

def config(model, name, out, **kw):
    cfg = dict(model_name_or_path=model, train_dataset=str(EXAMPLES / f"{name}.jsonl"), output_dir=str(out), batch_size=8,
               max_steps=5, log_interval=1, lr=5e-4, warmup_proportion=0.0, save_on_epoch_end=False, neg_nums=2, seed=7)
    if name == "distill": cfg.update(train_type="distill", train_dataset_vec=str(EXAMPLES / "distill_teacher.f32"))
    return {**cfg, **kw}

def losses(out): return np.array([json.loads(l)["loss"] for l in (Path(out) / "log.jsonl").read_text().splitlines()])

def weights(model_dir):
    st = SentenceTransformer(str(model_dir), device="cpu")
    return {k: v.detach().clone() for k, v in st.state_dict().items()}

def assert_same_run(single, multi):
    a, b = losses(single), losses(multi)
    assert len(a) == len(b) >= 5
    rel = np.abs(a - b) / np.abs(a)
    assert rel.max() <= 1e-4, (a, b)
    wa, wb = weights(Path(single) / "model"), weights(Path(multi) / "model")
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= 1e-5, diff
    return diff

needs_ds = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")
CASES = [("ddp", "hard_neg", dict(use_mrl=True, mrl_dims=[8, 16, 32])), ("ddp", "pairs", {}), ("ddp", "scored", {}),
         ("ddp", "distill", dict(use_mrl=True, mrl_dims=[64, 384])), ("fsdp", "hard_neg", dict(use_mrl=True, mrl_dims=[8, 32])),
         ("fsdp", "scored", {})] + [pytest.param(f"deepspeed{z}", "hard_neg", dict(use_mrl=True, mrl_dims=[8, 32]), marks=needs_ds) for z in (1, 2)]
# ZeRO-3 is not in this list: on CPU processes it hangs in its first step (launch refuses it without GPUs)

@pytest.mark.parametrize("strategy,name,extra", CASES)
def test_two_processes_equal_one(strategy, name, extra, model, tmp_path):
    "2 processes x 4 rows with cross-device negatives == 1 process x 8 rows: losses (1e-4) and final weights (1e-5)."
    zero_stage = int(strategy[-1]) if strategy.startswith("deepspeed") else 2
    strategy = strategy.rstrip("123")
    train(config(model, name, tmp_path / "single", **extra))
    launch(config(model, name, tmp_path / "multi", batch_size=4, **extra), num_processes=2, strategy=strategy, zero_stage=zero_stage)
    run = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert (run["world_size"], run["strategy"], run["negatives_cross_device"]) == (2, strategy, True)
    assert_same_run(tmp_path / "single", tmp_path / "multi")
    start = weights(model)
    moved = max((weights(tmp_path / "multi" / "model")[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the runs trained: equal weights are not just the untouched start
    if strategy == "ddp": assert run["replicas_max_abs_diff"] == 0.0

def test_unsynchronised_gradients_are_caught(model, tmp_path):
    "The check above fails when processes do not average gradients: skip DDP's all-reduce and compare again."
    import torch.nn.parallel.distributed as ddp_mod
    train(config(model, "pairs", tmp_path / "single"))
    original = ddp_mod.DistributedDataParallel.forward
    def no_sync_forward(self, *a, **k):
        with self.no_sync(): return original(self, *a, **k)
    ddp_mod.DistributedDataParallel.forward = no_sync_forward  # forked processes inherit the patch
    try: launch(config(model, "pairs", tmp_path / "multi", batch_size=4), num_processes=2, strategy="ddp")
    finally: ddp_mod.DistributedDataParallel.forward = original
    with pytest.raises(AssertionError): assert_same_run(tmp_path / "single", tmp_path / "multi")
    assert json.loads((tmp_path / "multi" / "run.json").read_text())["replicas_max_abs_diff"] > 0

def test_without_cross_device_each_process_sees_its_own_negatives(model, tmp_path):
    "Cross-device off: the first loss is the mean of each half's own loss; on: the loss of the whole batch."
    rows = (EXAMPLES / "pairs.jsonl").read_text().splitlines()[:8]
    for name, part in [("whole", rows), ("half0", rows[:4]), ("half1", rows[4:])]:
        (tmp_path / f"{name}.jsonl").write_text("\n".join(part) + "\n")
    first = lambda out: losses(out)[0]
    base = dict(model_name_or_path=model, output_dir="", max_steps=1, log_interval=1, shuffle=False, save_on_epoch_end=False)
    for name, bs in [("whole", 8), ("half0", 4), ("half1", 4)]:
        train({**base, "train_dataset": str(tmp_path / f"{name}.jsonl"), "output_dir": str(tmp_path / f"ref_{name}"), "batch_size": bs})
    for cross in [False, True]:
        launch({**base, "train_dataset": str(tmp_path / "whole.jsonl"), "output_dir": str(tmp_path / f"multi_{cross}"), "batch_size": 4,
                "negatives_cross_device": cross}, num_processes=2)
    own = (first(tmp_path / "ref_half0") + first(tmp_path / "ref_half1")) / 2
    assert abs(first(tmp_path / "multi_False") - own) <= 1e-4 * own
    assert abs(first(tmp_path / "multi_True") - first(tmp_path / "ref_whole")) <= 1e-4 * first(tmp_path / "ref_whole")
    assert abs(own - first(tmp_path / "ref_whole")) > 1e-2  # the two really differ

def test_cli_num_processes(model, tmp_path):
    from embed_nb.cli import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config(model, "pairs", tmp_path / "out", batch_size=4, max_steps=2).items()))
    assert main(["train", "--config", str(cfg), "--num-processes", "2", "--strategy", "ddp"]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["world_size"] == 2 and SentenceTransformer(str(tmp_path / "out" / "model"), device="cpu").encode(["x"]).shape == (1, 32)

@needs_ds
def test_zero3_on_cpu_is_refused_clearly(model, tmp_path):
    from embed_nb.core import ConfigError
    if torch.cuda.is_available(): pytest.skip("GPU machine")
    with pytest.raises(ConfigError, match="ZeRO-3"):
        launch(config(model, "pairs", tmp_path), num_processes=2, strategy="deepspeed", zero_stage=3)

def test_torchrun_entry_point(model, tmp_path):
    "Launchers that start the processes themselves (torchrun, accelerate launch on GPUs) run `-m embed_nb.train`."
    import os, subprocess, sys
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config(model, "pairs", tmp_path / "out", batch_size=4, max_steps=2).items()))
    exe = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(exe), "--nproc_per_node", "2", "-m", "embed_nb.train", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["world_size"] == 2 and run["negatives_cross_device"] and run["replicas_max_abs_diff"] == 0.0

def test_spec_fsdp_config_names_the_models_layers_and_is_refused_clearly_on_cpu(model, tmp_path):
    """The spec's `accelerate launch --config_file default_fsdp.yaml -m embed_nb.train`: the yaml's layer class is the
    model's; on a machine without GPUs accelerate's FSDP plugin cannot start, and the run says so in one line."""
    import os, subprocess, sys, yaml
    from accelerate.commands.config.config_args import load_config_from_file
    from embed_nb.distributed import transformer_layer_classes
    from embed_nb.model import Embedding
    spec = EXAMPLES / "accelerate" / "default_fsdp.yaml"
    assert load_config_from_file(str(spec)).distributed_type.value == "FSDP"
    layer = yaml.safe_load(spec.read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    assert layer in transformer_layer_classes(Embedding.from_pretrained(model))
    if torch.cuda.is_available(): pytest.skip("GPU machine: bench/gpu_check.sh runs this path")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config(model, "pairs", tmp_path / "out", batch_size=4, max_steps=2).items()))
    exe = Path(sys.executable).parent / "accelerate"
    r = subprocess.run([str(exe), "launch", "--config_file", str(spec), "--num_processes", "1", "-m", "embed_nb.train",
                        "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "embed-nb: error: the accelerate config asks for FSDP, which accelerate runs only on GPUs" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "out").exists()  # refused before anything was written

@needs_ds
def test_spec_deepspeed_config_matches_the_plugin_embed_nb_builds():
    "The ZeRO stage and clipping of the spec's DeepSpeed yaml are what `accelerator_kwargs` gives DeepSpeed."
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file
    from embed_nb.distributed import accelerator_kwargs
    spec = EXAMPLES / "accelerate" / "deepspeed_zero2.yaml"
    assert load_config_from_file(str(spec)).distributed_type.value == "DEEPSPEED"
    ds = yaml.safe_load(spec.read_text())["deepspeed_config"]
    plugin = accelerator_kwargs("deepspeed", zero_stage=ds["zero_stage"], batch_size=4, max_grad_norm=ds["gradient_clipping"])["deepspeed_plugin"]
    assert plugin.zero_stage == ds["zero_stage"] and plugin.deepspeed_config["gradient_clipping"] == ds["gradient_clipping"]
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 4  # "auto" in the yaml: set from the config

@needs_ds
@pytest.mark.parametrize("num_processes,zero_stage", [(1, 2), (2, 2), (1, 3)])
def test_spec_deepspeed_yaml_through_accelerate_launch(model, tmp_path, num_processes, zero_stage):
    """The spec's `accelerate launch --config_file deepspeed_zero2.yaml -m embed_nb.train` on CPU processes: its "auto"
    values are filled from the config, the run equals one process with the whole batch, and the saved model (Matryoshka
    Dense head included) loads in plain sentence-transformers."""
    import os, subprocess, sys
    extra = dict(use_mrl=True, mrl_dims=[8, 32])
    train(config(model, "hard_neg", tmp_path / "single", **extra))
    cfg = tmp_path / "c.yaml"
    multi = config(model, "hard_neg", tmp_path / "multi", batch_size=8 // num_processes, **extra)
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in multi.items()))
    exe = Path(sys.executable).parent / "accelerate"
    r = subprocess.run([str(exe), "launch", "--config_file", str(EXAMPLES / "accelerate" / "deepspeed_zero2.yaml"),
                        "--num_processes", str(num_processes), "--zero_stage", str(zero_stage), "-m", "embed_nb.train", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"})
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert (run["world_size"], run["distributed_type"]) == (num_processes, "DEEPSPEED")
    assert run["process_settings"]["deepspeed_filled"]["train_micro_batch_size_per_gpu"] == 8 // num_processes
    assert_same_run(tmp_path / "single", tmp_path / "multi")
    st = SentenceTransformer(str(tmp_path / "multi" / "model"), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense"] and st.encode(["x"]).shape == (1, 32)

@pytest.mark.parametrize("strategy", ["fsdp", pytest.param("deepspeed1", marks=needs_ds), pytest.param("deepspeed2", marks=needs_ds),
                                      pytest.param("deepspeed3", marks=needs_ds)])
def test_one_process_that_shards_equals_plain_training(model, tmp_path, strategy):
    "`launch(num_processes=1, strategy=...)` runs the strategy (a group of one process), and trains as plain `train` does."
    zero_stage = int(strategy[-1]) if strategy.startswith("deepspeed") else 2
    strategy = strategy.rstrip("123")
    extra = dict(use_mrl=True, mrl_dims=[8, 32])
    train(config(model, "hard_neg", tmp_path / "single", **extra))
    launch(config(model, "hard_neg", tmp_path / "one", **extra), num_processes=1, strategy=strategy, zero_stage=zero_stage)
    run = json.loads((tmp_path / "one" / "run.json").read_text())
    assert (run["world_size"], run["strategy"]) == (1, strategy)
    assert run["distributed_type"] == ("DEEPSPEED" if strategy == "deepspeed" else "MULTI_CPU" if not torch.cuda.is_available() else run["distributed_type"])
    assert_same_run(tmp_path / "single", tmp_path / "one")

@needs_ds
def test_zero3_in_bf16_with_a_matryoshka_head(model, tmp_path):
    "ZeRO-3 in bf16 with the Dense head embed_nb adds: the head used to be the one float32 module among bf16 partitions."
    launch(config(model, "hard_neg", tmp_path / "z3", use_mrl=True, mrl_dims=[8, 32]), num_processes=1, strategy="deepspeed",
           zero_stage=3, mixed_precision="bf16")
    assert np.isfinite(losses(tmp_path / "z3")).all()
    st = SentenceTransformer(str(tmp_path / "z3" / "model"), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense"] and st.encode(["x"]).shape == (1, 32)
