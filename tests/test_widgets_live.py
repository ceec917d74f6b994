"""The loss widget follows a run in launched processes: it redraws while two gloo processes write log.jsonl."""
import json
import pytest
from conftest import EXAMPLES

@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_loss_widget_follows_launched_training(tiny_model, tmp_path, strategy):
    from embed_nb.train import launch
    from embed_nb.widgets import LossWidget, read_log
    run = tmp_path / "run"
    widget = LossWidget(run)  # before the run exists: an empty plot
    assert widget.draws == 1
    thread = widget.follow(interval=0.1, idle_stop=3.0)
    launch({"model_name_or_path": tiny_model, "train_dataset": str(EXAMPLES / "pairs.jsonl"), "output_dir": str(run),
            "batch_size": 4, "max_steps": 12, "log_interval": 1, "save_on_epoch_end": False,
            "eval_dataset": str(EXAMPLES / "eval"), "eval_steps": 6}, num_processes=2, strategy=strategy)
    thread.join(10)
    assert widget.draws >= 3, widget.draws  # redrawn while the processes ran, not only at the end
    steps = list(widget.fig.axes[0].get_lines()[0].get_xdata())
    assert steps == list(range(1, 13)) == list(read_log(run).dropna(subset=["loss"])["step"])
    evals = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [r["step"] for r in evals] == [0, 6, 12]  # evaluation during training, by the main process (FSDP: on the gathered weights)
    assert widget.metric.value == "ndcg@10"  # the widget found the evaluation metrics and draws them beside the loss
