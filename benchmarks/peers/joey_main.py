"""Joey NMT's command line with one fix: with sentencepiece 0.2 its tokenizer calls
`SentencePieceProcessor.SetVocabulary`, which that version no longer has (../shared/PEERS.md).
The call only restricts the pieces to Joey's vocabulary, which here is exactly the sentencepiece
vocabulary, so it is made a no-op.

    .venv-peers/joey/bin/python benchmarks/peers/joey_main.py train config.yaml
"""

import runpy
import sys

import sentencepiece

sentencepiece.SentencePieceProcessor.SetVocabulary = lambda self, *args, **kwargs: None
sys.argv = ["joeynmt", *sys.argv[1:]]
runpy.run_module("joeynmt", run_name="__main__")
