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
