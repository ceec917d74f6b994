"""Tokens a training epoch computes on: padded widths of embed_nb's batches, counted, not timed.

For InsuranceQA train pairs, all-MiniLM-L6-v2's tokenizer, max length 256: the real tokens of the questions and
answers against the tokens of their padded batches, for random batches and for embed_nb's length-grouped ones (grouped
on exact token counts and on the estimates its loader uses), each padded to the longest text, to a multiple of
--multiple on every side (how embed_nb padded before `padded_width`), and by `padded_width` (a multiple, and a power of
two from 8 below it). No model runs: the counts are exact and the same on any machine.

    .venv/bin/python bench/padding.py --pairs 16384 --batch-size 128 --multiple 64
"""

from __future__ import annotations
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, parser, read_pairs, report, save, train_pairs


def parse(argv=None):
    p = parser(__doc__)
    p.add_argument("--pairs", type=int, default=16384, help="InsuranceQA train pairs")
    p.add_argument("--pairs-file", default=None, help="a jsonl of {query, pos} pairs instead of InsuranceQA")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--multiple", type=int, default=64, help="pad_to_multiple_of (64: embed_nb's default on a GPU)")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--name", default="padding")
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    from transformers import AutoTokenizer
    from embed_nb.data import BatchSampler, TokenCache, padded_width
    from embed_nb.model import default_model_path

    pairs = read_pairs(a.pairs_file, a.pairs) if a.pairs_file else train_pairs(a.pairs)
    tok = AutoTokenizer.from_pretrained(default_model_path())
    exact, guess = TokenCache(tok, a.max_len), TokenCache(tok, a.max_len)
    q, d = exact.lengths([p[0] for p in pairs]), exact.lengths([p[1] for p in pairs])
    qe, de = guess.estimate_lengths([p[0] for p in pairs]), guess.estimate_lengths([p[1] for p in pairs])
    samplers = {
        "random": BatchSampler(q + d, a.batch_size, group_by_length=False),
        "grouped, exact lengths": BatchSampler(q + d, a.batch_size),
        "grouped, estimated lengths (embed_nb)": BatchSampler(qe + de, a.batch_size),
    }
    widths = {
        "longest": lambda n: n,
        f"multiple of {a.multiple}": lambda n: -(-n // a.multiple) * a.multiple,
        "padded_width (embed_nb)": lambda n: padded_width(n, a.multiple),
    }
    real = int(q.sum() + d.sum())
    rows, out = [], {}
    for s_name, sampler in samplers.items():
        batches = list(sampler)
        for w_name, width in widths.items():
            qt = sum(min(width(int(q[b].max())), a.max_len) * len(b) for b in batches)
            dt = sum(min(width(int(d[b].max())), a.max_len) * len(b) for b in batches)
            shapes = len({(len(b), min(width(int(x[b].max())), a.max_len)) for b in batches for x in (q, d)})
            out[f"{s_name} / {w_name}"] = dict(
                query_tokens=qt, doc_tokens=dt, padding=1 - real / (qt + dt), shapes=shapes
            )
            rows.append([s_name, w_name, qt, dt, qt + dt, f"{1 - real / (qt + dt):.1%}", shapes])
    header = ["batches", "padded to", "query tokens", "answer tokens", "all tokens", "padding", "distinct shapes"]
    print(
        f"{len(pairs)} pairs, batch {a.batch_size}, real tokens {real} (questions {int(q.sum())}, answers {int(d.sum())})\n"
    )
    print(markdown_table(header, rows))
    save(
        a.name,
        report(
            "padding",
            a,
            real_tokens=real,
            real_query_tokens=int(q.sum()),
            real_doc_tokens=int(d.sum()),
            results=out,
        ),
    )


if __name__ == "__main__":
    main()
