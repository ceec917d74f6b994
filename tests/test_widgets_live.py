"""The loss widget follows a run in launched processes: it redraws while two gloo processes write log.jsonl."""

import json
import pytest
from conftest import EXAMPLES, log_records, run_config


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_loss_widget_follows_launched_training(tiny_model, tmp_path, strategy):
    from embed_nb.train import launch
    from embed_nb.widgets import LossWidget, read_log

    class Recorded(LossWidget):
        "A loss widget that notes how many loss points each of its drawings showed."

        def __init__(self, runs):
            self.shown = []
            super().__init__(runs)

        def draw(self):
            fig = super().draw()
            lines = fig.axes[0].get_lines()
            self.shown.append(len(lines[0].get_xdata()) if lines else 0)
            return fig

    run = tmp_path / "run"
    widget = Recorded(run)  # before the run exists: an empty plot
    assert widget.draws == 1 and widget.shown == [0]
    thread = widget.follow(interval=0.1, until_finished=True)  # stops once run.json says finished, not when idle
    cfg = run_config(
        tiny_model, run, "pairs", batch_size=4, max_steps=12, eval_dataset=str(EXAMPLES / "eval"), eval_steps=6
    )
    launch(cfg, num_processes=2, strategy=strategy)
    assert "finished" in json.loads((run / "run.json").read_text())
    thread.join(timeout=120)  # the run has finished: the thread ends at its next look (the timeout only guards a bug)
    assert not thread.is_alive()
    redraws = widget.shown[1:]  # the loss points shown at each redraw by `follow`
    assert widget.draws == len(widget.shown)
    assert redraws == sorted(redraws), redraws  # the plot grew with the log
    assert redraws and redraws[-1] == 12, redraws  # and its last redraw showed every step
    assert any(n < 12 for n in redraws), redraws  # redrawn while the processes ran, not only at the end
    steps = list(widget.fig.axes[0].get_lines()[0].get_xdata())
    assert steps == list(range(1, 13)) == list(read_log(run).dropna(subset=["loss"])["step"])
    evals = [r for r in log_records(run) if "eval" in r]
    assert [r["step"] for r in evals] == [
        0,
        6,
        12,
    ]  # evaluation during training, by the main process (FSDP: on the gathered weights)
    assert widget.metric.value == "ndcg@10"  # the widget found the evaluation metrics and draws them beside the loss
    eval_lines = widget.fig.axes[1].get_lines()  # axes: loss, eval, lr twin
    assert eval_lines and all(list(line.get_xdata()) == [0, 6, 12] for line in eval_lines)  # each evaluation drawn
