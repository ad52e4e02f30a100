"""Word alignments from attention."""

import torch

from nmtkit.alignment import align, pharaoh, replace_unknown, word_attention, word_of_piece
from nmtkit.translator import Translator


def test_pieces_group_into_words_and_attention_sums_over_them() -> None:
    assert word_of_piece(["\u2581forty", "-", "five", "\u2581thousand"]) == [0, 0, 0, 1]
    src = ["\u2581a", "b", "\u2581c"]  # words: ab, c
    tgt = ["\u2581x", "\u2581y", "z"]  # words: x, yz
    attention = torch.tensor([[0.1, 0.2, 0.6, 0.1],  # rows: x, y, z, </s>; columns: a, b, c, </s>
                              [0.5, 0.3, 0.1, 0.1],
                              [0.0, 0.1, 0.8, 0.1],
                              [0.2, 0.2, 0.2, 0.4]])
    words = word_attention(attention, src, tgt)
    assert torch.allclose(words, torch.tensor([[0.3, 0.6], [0.9, 0.9]]))
    assert align(attention, src, tgt) == [(1, 0), (0, 1)]  # each target word once
    assert pharaoh([(1, 0), (0, 1)]) == "1-0 0-1"
    assert align(attention, src, []) == []
    replaced = replace_unknown(["\u2581x", "<unk>"], "<unk>", attention, src, ["ab", "c"])
    assert replaced == ["\u2581x", "\u2581ab"]


def test_alignments_link_the_number_words_that_mean_each_other(numbers_checkpoint) -> None:
    """Hand-checked: in 삼십사만 오천육백칠십팔 (34 ten-thousands, 5678), "three hundred" comes from
    the first Korean word and "hundred seventy-eight" from the second."""
    t = Translator.load(numbers_checkpoint)
    (r,) = t.translate(["삼십사만 오천육백칠십팔"], return_details=True, alignment=True)
    assert r.text == "three hundred forty-five thousand six hundred seventy-eight"
    pairs = dict((tgt, src) for src, tgt in r.alignment)
    assert sorted(pairs) == list(range(7))  # one source word for each of the 7 target words
    assert pairs[0] == pairs[1] == 0  # three hundred
    assert pairs[5] == pairs[6] == 1  # (six) hundred seventy-eight
