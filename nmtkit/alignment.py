"""Word alignments from attention: which source word each target word attends to most.

Attention is not alignment. It says where the model looked while it produced a word, which often
but not always is the word it translates (a Transformer's layers and heads look at different
things, and some attend mostly to punctuation or </s>); Garg et al. (2019) found the average
over the heads of the second-to-last decoder layer the closest to human alignments, which is
why that is the Transformer's default here. Treat the pairs as a good guess, not ground truth.

Attention is over subword pieces; alignments are over words (a word is a piece starting with
sentencepiece's "\u2581" and the pieces that follow it): a word's attention is the sum over its
pieces, and </s> is left out on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nmtkit.vocabulary import WORD_START


def word_of_piece(pieces: Sequence[str]) -> list[int]:
    """For each piece, the index of the word it belongs to."""
    words, index = [], -1
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith(WORD_START):
            index += 1
        words.append(index)
    return words


def word_attention(attention: Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> Tensor:
    """attention (target pieces [+ </s>], source pieces [+ </s>]) -> (target words, source
    words): the sum over each word's pieces, </s> left out."""
    att = attention[: len(tgt_pieces), : len(src_pieces)].float()
    src_words = torch.tensor(word_of_piece(src_pieces), dtype=torch.long)
    tgt_words = torch.tensor(word_of_piece(tgt_pieces), dtype=torch.long)
    n_src = int(src_words.max()) + 1 if len(src_pieces) else 0
    n_tgt = int(tgt_words.max()) + 1 if len(tgt_pieces) else 0
    by_src = torch.zeros(att.size(0), n_src).index_add_(1, src_words, att)  # (tgt pieces, src words)
    return torch.zeros(n_tgt, n_src).index_add_(0, tgt_words, by_src)


def align(attention: Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> list[tuple[int, int]]:
    """(source word, target word) pairs: each target word with the source word it attends to
    most. Sorted by target word; every target word appears once (none for an empty side)."""
    words = word_attention(attention, src_pieces, tgt_pieces)
    if words.numel() == 0:
        return []
    best = words.argmax(dim=1).tolist()
    return [(s, t) for t, s in enumerate(best)]


def pharaoh(pairs: Sequence[tuple[int, int]]) -> str:
    """The Pharaoh format of fast_align and Moses: 'i-j' pairs (source-target), space-separated."""
    return " ".join(f"{s}-{t}" for s, t in pairs)


def replace_unknown(tgt_pieces: Sequence[str], unk: str, attention: Tensor, src_pieces: Sequence[str],
                    src_words: Sequence[str]) -> list[str]:
    """The target pieces with every `unk` piece replaced by the source word it attends to most
    (the classic remedy for rare names: Luong et al. 2015)."""
    owner = word_of_piece(src_pieces)
    out = []
    for t, piece in enumerate(tgt_pieces):
        if piece == unk and len(src_pieces):
            s = int(attention[t, : len(src_pieces)].argmax())
            word = src_words[owner[s]] if owner[s] < len(src_words) else ""
            piece = WORD_START + word
        out.append(piece)
    return out
