"""BLEU the way Multi30k papers report it: Moses-tokenized, lowercased text scored as it is
(multi-bleu.perl), next to sacreBLEU's own lowercased 13a tokenization.

    .venv-peers/joey/bin/python benchmarks/tokenized_bleu.py runs/multi30k/RUN.test2016.hyp \\
        ../shared/data/multi30k/test2016.de [--lang de]

Needs sacremoses, which nmtkit does not depend on: `make peers` installs it with Joey NMT (or
`pip install sacremoses` into any environment that has sacrebleu).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sacrebleu
from sacremoses import MosesTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("hyp", type=Path)
    p.add_argument("ref", type=Path)
    p.add_argument("--lang", default="de")
    args = p.parse_args()
    hyps = args.hyp.read_text(encoding="utf-8").splitlines()
    refs = args.ref.read_text(encoding="utf-8").splitlines()
    if len(hyps) != len(refs):
        raise SystemExit(f"tokenized_bleu: error: {args.hyp} has {len(hyps)} lines, {args.ref} {len(refs)}")
    moses = MosesTokenizer(lang=args.lang)

    def tokenized(lines: list[str]) -> list[str]:
        return [moses.tokenize(line, return_str=True, escape=False).lower() for line in lines]

    moses_bleu = sacrebleu.corpus_bleu(tokenized(hyps), [tokenized(refs)], tokenize="none")
    sacre_lc = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True)
    print("| scoring | BLEU |\n|---|---:|")
    print(f"| Moses-tokenized, lowercased (multi-bleu.perl) | {moses_bleu.score:.2f} |")
    print(f"| sacreBLEU, lowercased, 13a | {sacre_lc.score:.2f} |")


if __name__ == "__main__":
    main()
