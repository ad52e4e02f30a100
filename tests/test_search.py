"""Search on tiny models of both families: greedy, beam, sampling, ensembles, length rules."""

import math

import pytest
import torch

from nmtkit.config import RNNConfig, TransformerConfig
from nmtkit.data import collate, collate_source
from nmtkit.model import build_model
from nmtkit.search import (
    EnsembleModel,
    Steering,
    _remaining,
    _rows_kept,
    beam_search,
    greedy_search,
    length_limits,
    length_penalty,
    sample,
    top_extensions,
)
from nmtkit.seq2seq import Seq2Seq
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID

VOCAB = 24
FAMILIES = {
    "rnn": RNNConfig(embed_size=16, hidden_size=32, encoder_layers=1, decoder_layers=1, dropout=0.0),
    "transformer": TransformerConfig(d_model=32, heads=2, ff_size=64, encoder_layers=1,
                                     decoder_layers=1, dropout=0.0),
}


def make_model(family: str, seed: int = 0, train_steps: int = 0) -> Seq2Seq:
    """A tiny model, trained for a few steps to reverse sequences (so that it has learnt to end
    them and to prefer some outputs over others), or untrained (nearly uniform predictions)."""
    torch.manual_seed(seed)
    model = build_model(FAMILIES[family], VOCAB, VOCAB)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(train_steps):
        seqs = [torch.randint(4, VOCAB, (int(n),), generator=gen).tolist()
                for n in torch.randint(2, 8, (32,), generator=gen)]
        batch = collate([(s, s[::-1]) for s in seqs], list(range(len(seqs))))
        log_probs = model(batch.src, batch.src_lengths, batch.tgt_in)
        loss = torch.nn.functional.nll_loss(log_probs.transpose(1, 2), batch.tgt_out,
                                            ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> dict[str, Seq2Seq]:
    return {family: make_model(family, seed=1, train_steps=30) for family in FAMILIES}


def sources(n: int = 10, seed: int = 5) -> list[list[int]]:
    """Source sentences as ids (collate_source appends EOS)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (int(k),), generator=gen).tolist()
            for k in torch.randint(1, 9, (n,), generator=gen)]


def penalised(log_prob: float, n_tokens: int, alpha: float) -> float:
    return log_prob / length_penalty(n_tokens + 1, alpha)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_one_is_greedy(trained, family) -> None:
    src, lengths = collate_source(sources(16))
    greedy = greedy_search(trained[family], src, lengths)
    beam = beam_search(trained[family], src, lengths, beam_size=1, length_penalty_alpha=1.0)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.log_prob for h in beam] == pytest.approx([h.log_prob for h in greedy], abs=1e-5)
    assert any(len(h.tokens) < length for h, length in zip(greedy, lengths * 1.5 + 10, strict=True))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_scores_at_least_as_well_as_greedy(trained, family, alpha) -> None:
    src, lengths = collate_source(sources(16))
    greedy = greedy_search(trained[family], src, lengths)
    beam = beam_search(trained[family], src, lengths, beam_size=5, length_penalty_alpha=alpha)
    for g, b in zip(greedy, beam, strict=True):
        assert b.score >= penalised(g.log_prob, len(g.tokens), alpha) - 1e-4
        assert b.score == pytest.approx(penalised(b.log_prob, len(b.tokens), alpha))
    assert any(b.tokens != g.tokens for g, b in zip(greedy, beam, strict=True))  # beam did search


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beam", [1, 5])
def test_batched_equals_one_at_a_time(trained, family, beam) -> None:
    seqs = sources(12)
    model = trained[family]

    def run(batch: list[list[int]]):
        src, lengths = collate_source(batch)
        if beam == 1:
            return greedy_search(model, src, lengths)
        return beam_search(model, src, lengths, beam_size=beam, nbest=beam)

    together = run(seqs)
    alone = [run([s])[0] for s in seqs]
    for a, b in zip(together, alone, strict=True):
        assert a.tokens == b.tokens
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert [h.tokens for h in a.nbest] == [h.tokens for h in b.nbest]


@pytest.mark.parametrize("family", FAMILIES)
def test_nbest_sorted_and_distinct(trained, family) -> None:
    seqs = sources(8)
    src, lengths = collate_source(seqs)
    hyps = beam_search(trained[family], src, lengths, beam_size=5, nbest=4)
    for hyp in hyps:
        assert len(hyp.nbest) == 4
        scores = [h.score for h in hyp.nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyp.nbest}) == 4
        assert hyp.nbest[0].tokens == hyp.tokens and hyp.nbest[0].score == hyp.score


@pytest.mark.parametrize("family", FAMILIES)
def test_length_limits_and_forced_length(family) -> None:
    model = make_model(family)  # untrained: rarely ends on its own, so the limit is what ends it
    seqs = sources(6)
    src, lengths = collate_source(seqs)
    limits = length_limits(model, lengths, max_len_a=0.5, max_len_b=2)
    for hyps in (greedy_search(model, src, lengths, 0.5, 2),
                 beam_search(model, src, lengths, 3, max_len_a=0.5, max_len_b=2)):
        assert all(len(h.tokens) <= limit for h, limit in zip(hyps, limits.tolist(), strict=True))
    # min_len = limit: every output has exactly that many tokens (what the benchmark relies on)
    for hyps in (greedy_search(model, src, lengths, 0, 7, min_len=7),
                 beam_search(model, src, lengths, 4, max_len_a=0, max_len_b=7, min_len=7),
                 sample(model, src, lengths, max_len_a=0, max_len_b=7, min_len=7)):
        assert [len(h.tokens) for h in hyps] == [7] * len(seqs)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_seeded(trained, family) -> None:
    src, lengths = collate_source(sources(8))
    spread = make_model(family, seed=3)  # untrained: probabilities spread over the vocabulary

    def draw(model: Seq2Seq, seed: int, **kw) -> list[list[int]]:
        hyps = sample(model, src, lengths, generator=torch.Generator().manual_seed(seed), **kw)
        return [h.tokens for h in hyps]

    assert draw(spread, 1) == draw(spread, 1)
    assert draw(spread, 1) != draw(spread, 2)
    # keeping only the likeliest token (top-k 1, or a tiny nucleus) is greedy search
    greedy = [h.tokens for h in greedy_search(trained[family], src, lengths)]
    assert draw(trained[family], 1, top_k=1) == greedy
    assert draw(trained[family], 2, top_p=1e-6) == greedy
    # several samples per sentence, most probable first
    hyps = sample(spread, src, lengths, generator=torch.Generator().manual_seed(0), num_samples=4)
    for hyp in hyps:
        assert len(hyp.nbest) == 4 and hyp.nbest[0].tokens == hyp.tokens
        assert [h.score for h in hyp.nbest] == sorted((h.score for h in hyp.nbest), reverse=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_ensemble_of_one_is_the_model(trained, family) -> None:
    src, lengths = collate_source(sources(10))
    model, ensemble = trained[family], EnsembleModel([trained[family]])
    for search in (greedy_search, lambda m, s, n: beam_search(m, s, n, beam_size=4, nbest=4)):
        alone, together = search(model, src, lengths), search(ensemble, src, lengths)
        assert [h.tokens for h in together] == [h.tokens for h in alone]
        assert [h.score for h in together] == [h.score for h in alone]


def test_ensemble_averages_probabilities(trained) -> None:
    members = [trained["rnn"], trained["transformer"]]  # same vocabulary, different families
    ensemble = EnsembleModel(members)
    src, lengths = collate_source(sources(6))
    prev = torch.full((6,), BOS_ID)
    mixed, _ = ensemble.step(prev, ensemble.init_state(ensemble.encode(src, lengths)))
    each = [m.step(prev, m.init_state(m.encode(src, lengths)))[0].log_softmax(-1) for m in members]
    expected = torch.log((each[0].exp() + each[1].exp()) / 2)  # log of the mean probability
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(6), atol=1e-5)
    scores = [h.score for h in beam_search(ensemble, src, lengths, beam_size=3)]
    for member in members:
        alone = [h.score for h in beam_search(member, src, lengths, beam_size=3)]
        assert not any(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(scores, alone, strict=True))


@pytest.mark.parametrize("width", [8000, 8003, 700, 50])
def test_top_extensions_equal_a_topk_over_every_extension(width: int) -> None:
    g = torch.Generator().manual_seed(width)
    n, beams = 4, 3
    x = torch.randn(n * beams, width, generator=g)
    x[3] = float("-inf")  # a beam at its length limit: only EOS is allowed
    x[3, EOS_ID] = -1.0
    x[5, width - 1] = 100.0  # the best of a beam after the last whole block of 64 columns
    x[9:] = float("-inf")  # sentence 3: fewer finite extensions than asked for, one past the
    x[10, 3], x[11, width - 1] = -1.0, -0.5  # last whole block
    beam_scores = torch.randn(n, beams, generator=g) * 5
    everything = (beam_scores.unsqueeze(2) + x.view(n, beams, width)).view(n, -1)
    for count in (1, 2, 10):
        scores, extensions = top_extensions(x, beam_scores, count)
        expected_scores, expected = everything.topk(count, dim=1)
        assert torch.equal(scores, expected_scores)
        finite = expected_scores.isfinite()  # among -inf ties any extension will do
        assert torch.equal(extensions[finite], expected[finite])
        assert ((extensions >= 0) & (extensions < beams * width)).all()
        assert torch.equal(everything.gather(1, extensions)[finite], scores[finite])


def test_top_extensions_pads_when_there_are_fewer_than_asked() -> None:
    x = torch.randn(2, 3).log_softmax(-1)  # step 0: one beam each, three words
    scores, extensions = top_extensions(x, torch.zeros(2, 1), 5)
    assert scores[:, 3:].isneginf().all() and scores[:, :3].isfinite().all()
    assert ((extensions >= 0) & (extensions < 3)).all()


def test_sentences_that_stay_keep_their_places() -> None:
    """When sentences finish, the ones at the end fill their places; the others do not move."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        done = torch.rand(9, generator=g) < 0.4
        if done.all():
            continue
        order = _remaining(done)
        assert sorted(order.tolist()) == (~done).nonzero().squeeze(1).tolist()  # each once
        stayed = [i for i in range(order.size(0)) if not done[i]]
        assert order[stayed].tolist() == stayed


def test_beams_keep_their_parents_rows() -> None:
    """_rows_kept permutes each sentence's new beams so that the first child of every parent
    sits in the parent's row, and the others fill the rows of parents that have no child."""
    g = torch.Generator().manual_seed(0)
    for k in range(1, 7):
        parent = torch.randint(0, k, (50, k), generator=g)
        order = _rows_kept(parent)
        assert torch.equal(order.sort(dim=1).values, torch.arange(k).expand(50, k))  # permutations
        placed = parent.gather(1, order)  # the parent of the beam in each row
        for s in range(50):
            parents = parent[s].tolist()
            for p in set(parents):
                assert placed[s, p] == p and order[s, p] == parents.index(p)  # the first child
            moved = sum(placed[s, r] != r for r in range(k))
            assert moved == k - len(set(parents))  # only the extra children move


@pytest.mark.parametrize("family", FAMILIES)
def test_search_never_produces_pad_bos_or_unk(family) -> None:
    from nmtkit.vocabulary import UNK_ID

    model = make_model(family, seed=3)
    with torch.no_grad():  # make the specials by far the most probable outputs
        model.generator.bias.zero_()
        model.generator.bias[[PAD_ID, BOS_ID, UNK_ID]] = 50.0
    src, lengths = collate_source(sources(8))
    generator = torch.Generator().manual_seed(0)
    for hyps in (greedy_search(model, src, lengths), beam_search(model, src, lengths, beam_size=3),
                 sample(model, src, lengths, generator=generator)):
        produced = {token for h in hyps for token in h.tokens}
        assert produced and not produced & {PAD_ID, BOS_ID, UNK_ID}
    # allowed on request (for --replace-unk): then the model's favourite <unk> comes out
    steering = Steering(src.size(0), allow_unk=True)
    assert UNK_ID in {t for h in greedy_search(model, src, lengths, steering=steering) for t in h.tokens}


@pytest.mark.parametrize("family", FAMILIES)
def test_nan_weights_give_one_clear_error_in_every_search(family) -> None:
    from nmtkit.errors import NMTKitError

    model = make_model(family)
    with torch.no_grad():
        model.generator.weight.fill_(float("nan"))
    src, lengths = collate_source(sources(4))
    for search in (greedy_search, beam_search, sample):
        with pytest.raises(NMTKitError, match="not a number .*weights are not finite"):
            search(model, src, lengths)
