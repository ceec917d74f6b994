"""What attention dropout costs a CPU step: one training step of all-MiniLM-L6-v2 with its attention dropout (0.1, as
shipped, and as both embed_nb and sentence-transformers train it) against the same step with it set to 0, and the
attention kernel alone (torch's scaled_dot_product_attention, forward and backward) with and without dropout.

With dropout, CPU attention cannot use torch's fused kernel: it computes the attention matrix and draws one random
number per entry (batch x heads x length^2 per layer). Each variant is timed in the same process, alternating,
median of --repeats after one untimed step; random token ids (the cost does not depend on the words).

    .venv/bin/python bench/attention_cost.py --batch-size 32 --lengths 64,128,256
"""

from __future__ import annotations
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, parser, report, save


def parse(argv=None):
    p = parser(__doc__)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lengths", default="64,128,256")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--name", default="attention_cost_cpu")
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    import torch
    from embed_nb.model import Embedding

    model = Embedding.from_pretrained()
    model.train()
    hf = model.transformer
    dropout_modules = [m for m in hf.modules() if isinstance(m, torch.nn.Dropout)]
    attn_p = hf.config.attention_probs_dropout_prob
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    attention = [m for m in hf.modules() if type(m).__name__.endswith("SelfAttention")]
    assert attention and all(isinstance(m.dropout, torch.nn.Dropout) for m in attention)

    def set_attention_dropout(p):  # BERT's self-attention passes its dropout's p to the attention kernel in training
        for m in attention:
            m.dropout.p = p

    def step(length):
        ids = torch.randint(1000, 20000, (a.batch_size, length))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        start = time.perf_counter()
        model.embed(batch).pow(2).sum().backward()
        opt.zero_grad()
        return time.perf_counter() - start

    def kernel(length, p):
        shape = (
            a.batch_size,
            hf.config.num_attention_heads,
            length,
            hf.config.hidden_size // hf.config.num_attention_heads,
        )
        q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
        start = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p).sum().backward()
        return time.perf_counter() - start

    rows, out = [], {}
    for L in [int(x) for x in a.lengths.split(",")]:
        variants = {
            f"step, attention dropout {attn_p}": ("step", attn_p),
            "step, attention dropout 0": ("step", 0.0),
            f"kernel, dropout {attn_p}": ("kernel", attn_p),
            "kernel, dropout 0": ("kernel", 0.0),
        }
        times = {name: [] for name in variants}
        for r in range(a.repeats + 1):
            for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
                what, p = variants[name]
                if what == "step":
                    set_attention_dropout(p)
                    t = step(L)
                else:
                    t = kernel(L, p) * hf.config.num_hidden_layers
                if r:
                    times[name].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[L] = {"median_s": med, "runs": times}
        names = list(med)
        rows.append([L, med[names[0]], med[names[1]], med[names[0]] / med[names[1]], med[names[2]], med[names[3]]])
        print(f"length {L} done", file=sys.stderr, flush=True)
    set_attention_dropout(attn_p)
    print(
        f"\n{environment('cpu')['device']}, batch {a.batch_size}, one forward and backward (median of {a.repeats}); "
        f"kernel: scaled_dot_product_attention x {hf.config.num_hidden_layers} layers; hidden dropout unchanged "
        f"({len(dropout_modules)} dropout modules)\n"
    )
    print(
        markdown_table(
            [
                "length",
                f"step, attention dropout {attn_p} s",
                "step, attention dropout 0 s",
                "x",
                f"attention kernels, dropout {attn_p} s",
                "attention kernels, dropout 0 s",
            ],
            rows,
        )
    )
    save(
        a.name,
        report(
            "attention_cost",
            a,
            attention_dropout=attn_p,
            results=out,
        ),
    )


if __name__ == "__main__":
    main()
