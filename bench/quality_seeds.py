"""Join `quality.py` results of the same pairs, valid set and settings run for different training seeds (a run per seed or
per group of seeds: one machine's time runs out) into one table: nDCG@10 per contender and dimension, mean ± sample
standard deviation [min, max] over the seeds, and each contender's mean difference to a reference.

    .venv/bin/python bench/quality_seeds.py results/quality_budget100_seed0.json results/quality_budget100_seeds12.json \\
        --reference sentence_transformers --name quality_budget100
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, save

HERE = Path(__file__).resolve().parent


def per_seed(result: dict) -> dict:
    "{contender: {seed: {dim: nDCG@10}}} of one results file (a file of one seed names its contenders without it)."
    argv = result["argv"]
    seeds = argv[argv.index("--training-seeds") + 1].split(",") if "--training-seeds" in argv else ["0"]
    out = {}
    for name, dims in result["metrics"].items():
        m = re.fullmatch(r"(.+) seed (\d+)", name)
        if m:
            contender, seed = m.group(1), m.group(2)
        elif len(seeds) == 1 and name != "base":
            contender, seed = name, seeds[0]
        else:
            continue  # the base model, or a mean over seeds
        out.setdefault(contender, {})[seed] = {d: v["ndcg@10"] for d, v in dims.items()}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="quality.py results (JSON)")
    p.add_argument("--reference", default="sentence_transformers")
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    results = [json.loads((HERE / f if not Path(f).is_file() else Path(f)).read_text()) for f in a.files]
    settings = {
        k: v
        for k, v in results[0]["settings"].items()
        if k not in ("seeds", "training_seeds", "contenders", "name", "also")
    }
    for r in results[1:]:  # the same pairs, valid set and budget
        other = {
            k: v
            for k, v in r["settings"].items()
            if k not in ("seeds", "training_seeds", "contenders", "name", "also")
        }
        if other != settings or r["valid"] != results[0]["valid"] or r["train_pairs"] != results[0]["train_pairs"]:
            raise SystemExit("the files differ in settings, valid set or pairs: not one experiment")
    scores, base = {}, results[0]["metrics"]["base"]
    for r in results:
        for contender, seeds in per_seed(r).items():
            scores.setdefault(contender, {}).update(seeds)
    dims = list(base)
    summary = {}
    for c, seeds in scores.items():
        summary[c] = {"seeds": sorted(seeds, key=int)}
        for d in dims:
            v = [seeds[s][d] for s in summary[c]["seeds"]]
            summary[c][d] = {
                "mean": statistics.mean(v),
                "std": statistics.stdev(v) if len(v) > 1 else None,
                "min": min(v),
                "max": max(v),
                "per_seed": dict(zip(summary[c]["seeds"], v)),
            }
    ref = summary.get(a.reference)
    rows = []
    for d in dims:
        rows.append([d, "base", f"{base[d]['ndcg@10']:.4f}", ""])
        for c, s in summary.items():
            x = s[d]
            spread = f" ± {x['std']:.4f}" if x["std"] is not None else ""
            diff = f"{x['mean'] - ref[d]['mean']:+.4f}" if ref and c != a.reference else ""
            rows.append(
                [
                    d,
                    f"{c} ({len(s['seeds'])} seeds)",
                    f"{x['mean']:.4f}{spread} [{x['min']:.4f}, {x['max']:.4f}]",
                    diff,
                ]
            )
    table = markdown_table(["dim", "contender", "nDCG@10 mean ± std [min, max]", f"− {a.reference}"], rows)
    print(table)
    out = {"benchmark": "quality_seeds", "files": a.files, "settings": settings, "valid": results[0]["valid"]}
    out |= {"train_pairs": results[0]["train_pairs"], "base": base, "ndcg10_over_seeds": summary, "table": table}
    print("wrote", save(a.name, out))


if __name__ == "__main__":
    main()
