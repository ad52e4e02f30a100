import pytest
import torch

from nmtkit.config import RNNConfig
from nmtkit.errors import NMTKitError
from nmtkit.model import build_model
from nmtkit.search import greedy_search
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID


def test_teacher_forcing_feeds_the_gold_tokens() -> None:
    torch.manual_seed(0)
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, decoder_layers=1)
    model = build_model(cfg, 30, 30).eval()
    seen: list[torch.Tensor] = []
    model.decoder.embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    src = torch.randint(4, 30, (2, 5))
    tgt_in = torch.tensor([[BOS_ID, 7, 8, 9], [BOS_ID, 10, 11, PAD_ID]])
    model(src, torch.tensor([5, 5]), tgt_in)
    fed = torch.stack(seen, 1)  # input feeding: one embedding call per step, (batch,) each
    assert torch.equal(fed, tgt_in)
    # with teacher_forcing_ratio 0 the model's own predictions are fed back instead
    seen.clear()
    model(src, torch.tensor([5, 5]), tgt_in, teacher_forcing_ratio=0.0)
    fed_own = torch.stack(seen, 1)
    assert torch.equal(fed_own[:, 0], tgt_in[:, 0])
    assert not torch.equal(fed_own, tgt_in)


def _overfit(cfg: RNNConfig, steps: int = 300) -> tuple[list[list[int]], list[list[int]]]:
    torch.manual_seed(0)
    pairs = [([5, 6, 7], [8, 9]), ([6, 5], [9, 9, 8]), ([7, 7, 5, 6], [10]), ([5], [11, 8, 9, 10])]
    model = build_model(cfg, 16, 16)
    src = torch.full((4, 5), PAD_ID)
    tgt_in = torch.full((4, 5), PAD_ID)
    tgt_out = torch.full((4, 5), PAD_ID)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s) + 1] = torch.tensor(s + [EOS_ID])
        tgt_in[i, : len(t) + 1] = torch.tensor([BOS_ID] + t)
        tgt_out[i, : len(t) + 1] = torch.tensor(t + [EOS_ID])
    lengths = (src != PAD_ID).sum(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        log_probs = model(src, lengths, tgt_in)
        loss = torch.nn.functional.nll_loss(log_probs.transpose(1, 2), tgt_out, ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hyps = greedy_search(model, src, lengths, max_len_a=2, max_len_b=3)
    return [h.tokens for h in hyps], [t for _, t in pairs]


@pytest.mark.parametrize("kw", [
    {"cell": "lstm", "attention": "general", "input_feeding": True},
    {"cell": "gru", "attention": "concat", "input_feeding": False, "bridge": "sum"},
    {"cell": "lstm", "attention": "dot", "reverse_source": True, "bridge": "mean"},
])
def test_small_model_overfits_to_exact_match(kw) -> None:
    cfg = RNNConfig(embed_size=16, hidden_size=32, encoder_layers=1, decoder_layers=1,
                    dropout=0.0, **kw)
    hyps, gold = _overfit(cfg)
    assert hyps == gold


def test_sharing_and_tying() -> None:
    cfg = RNNConfig(embed_size=12, hidden_size=12, share_embeddings=True, tie_output=True)
    model = build_model(cfg, 20, 20)
    assert model.encoder.embedding is model.decoder.embedding
    assert model.generator.weight is model.decoder.embedding.weight
    with pytest.raises(NMTKitError, match="model.share_embeddings"):
        build_model(cfg, 20, 21)
    with pytest.raises(NMTKitError, match="model.tie_output"):
        build_model(RNNConfig(embed_size=8, hidden_size=12, tie_output=True), 20, 20)


@pytest.mark.parametrize("family", ["rnn", "transformer", "decoder-only"])
def test_the_training_loss_from_forward_is_the_loss_of_its_log_probs(family: str) -> None:
    """forward(target=...) computes the output layer and the loss together, in chunks; it must
    be the label-smoothed loss of forward's own log-probabilities, gradient included."""
    from nmtkit.config import DecoderOnlyConfig, TransformerConfig
    from nmtkit.decoder_only import build_decoder_only
    from nmtkit.loss import label_smoothed_nll

    torch.manual_seed(0)
    if family == "rnn":
        model = build_model(RNNConfig(embed_size=8, hidden_size=12, dropout=0.0), 30, 30)
    elif family == "transformer":
        model = build_model(TransformerConfig(d_model=16, heads=2, ff_size=32, encoder_layers=1,
                                              decoder_layers=1, dropout=0.0), 30, 30)
    else:
        model = build_decoder_only(DecoderOnlyConfig(d_model=16, heads=2, ff_size=32, layers=2, dropout=0.0),
                                   30, 30)
    src = torch.randint(4, 30, (2, 5))
    src_lengths = torch.tensor([5, 3])
    src[1, 3:] = PAD_ID
    tgt_in = torch.tensor([[BOS_ID, 7, 8, 9], [BOS_ID, 10, 11, PAD_ID]])
    tgt_out = torch.tensor([[7, 8, 9, EOS_ID], [10, 11, EOS_ID, PAD_ID]])
    loss, nll = model(src, src_lengths, tgt_in, target=tgt_out, smoothing=0.1)
    loss.backward()
    fused = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ref_loss, ref_nll = label_smoothed_nll(model(src, src_lengths, tgt_in), tgt_out, 0.1)
    ref_loss.backward()
    ref = [p.grad for p in model.parameters() if p.grad is not None]
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)
    assert len(fused) == len(ref)
    for a, b in zip(fused, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
