"""How much of InsuranceQA's Chinese text the embedded all-MiniLM-L6-v2 tokenizer knows: the share of [UNK] tokens in
the train questions and their answers (the valid and test splits are not read), and how many CJK characters its
vocabulary holds. A model cannot learn characters it reads as [UNK], whatever the fine-tuning.

    .venv/bin/python bench/zh_vocab.py
"""

import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_requirements

CJK = re.compile(r"[\u4e00-\u9fff]")


def main():
    ensure_requirements(("insuranceqa_data",))
    import insuranceqa_data as iqa
    from transformers import AutoTokenizer

    from embed_nb.model import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    train, pool = iqa.load_train(), iqa.load_answers()
    ids = lambda v: [str(x) for x in (ast.literal_eval(v) if isinstance(v, str) else v)]
    questions = [v["zh"] for v in train.values()]
    answers = [pool[a]["zh"] for a in dict.fromkeys(a for v in train.values() for a in ids(v["answers"]))]
    for name, texts in [("train questions", questions), ("their answers", answers)]:
        tokens = [t for s in texts for t in tok.tokenize(s)]
        unk = sum(t == tok.unk_token for t in tokens)
        chars = sum(len(CJK.findall(s)) for s in texts)
        print(
            f"{name}: {len(texts)} texts, {chars} CJK characters, {len(tokens)} tokens, {unk} {tok.unk_token} "
            f"({unk / len(tokens):.1%} of the tokens)"
        )
    vocab = tok.get_vocab()
    print(f"vocabulary: {len(vocab)} entries, {sum(1 for k in vocab if CJK.fullmatch(k))} of them CJK characters")
    print(f"e.g. {questions[0]} -> {' '.join(tok.tokenize(questions[0]))}")


if __name__ == "__main__":
    main()
