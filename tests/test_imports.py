"""Importing embed_nb changes nothing process-wide: no environment variable, no torch thread count, no random state."""

import json
import subprocess
import sys

MODULES = ["core", "data", "losses", "model", "distributed", "gradcache", "evaluate", "run_folder", "card", "train"]
MODULES += ["mine", "widgets", "cli"]

# the libraries embed_nb builds on are imported first: importing sentence-transformers sets a few variables of its own
PROBE = """
import json, os, random, numpy, torch, sentence_transformers, accelerate, transformers
state = lambda: (dict(os.environ), torch.get_num_threads(), torch.get_rng_state().tolist(), random.getstate(),
                 numpy.random.get_state()[1].tolist())
before = state()
for name in {modules}:
    __import__("embed_nb." + name)
after = state()
names = ["environment", "threads", "torch random state", "python random state", "numpy random state"]
changed = [n for n, a, b in zip(names, before, after) if a != b]
env = sorted(k for k in before[0].keys() | after[0].keys() if before[0].get(k) != after[0].get(k))
print(json.dumps({{"changed": changed, "variables": env}}))
"""


def test_importing_every_module_leaves_the_process_as_it_was():
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=MODULES)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"changed": [], "variables": []}
