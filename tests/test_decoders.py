import pytest
import torch

from nmtkit.config import RNNConfig
from nmtkit.decoders import Bridge
from nmtkit.model import build_model


def _batch():
    torch.manual_seed(1)
    src = torch.randint(4, 30, (2, 6))
    src[1, 4:] = 0
    return src, torch.tensor([6, 4])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("mode", ["concat", "sum", "mean"])
@pytest.mark.parametrize("enc_layers, dec_layers", [(2, 2), (1, 2), (3, 2)])
def test_bidirectional_merge_gives_decoder_sized_states(cell, mode, enc_layers, dec_layers) -> None:
    cfg = RNNConfig(cell=cell, bridge=mode, embed_size=8, hidden_size=12,
                    encoder_layers=enc_layers, decoder_layers=dec_layers, bidirectional=True)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    enc = model.encode(src, lengths)
    assert enc.memory.shape == (2, 6, 24)  # both directions side by side
    state = model.init_state(enc)
    assert state.hidden.shape == (dec_layers, 2, 12)
    if cell == "lstm":
        assert state.cell.shape == (dec_layers, 2, 12)
    else:
        assert state.cell is None


def test_bridge_modes_combine_forward_and_backward() -> None:
    final = torch.stack([torch.full((1, 3), 1.0), torch.full((1, 3), 3.0)])  # (2 dirs, 1, 3)
    assert torch.allclose(Bridge("sum", 3, True)(final), torch.full((1, 1, 3), 4.0))
    assert torch.allclose(Bridge("mean", 3, True)(final), torch.full((1, 1, 3), 2.0))
    assert Bridge("concat", 3, True)(final).shape == (1, 1, 3)
    assert torch.equal(Bridge("concat", 3, False)(final), final)


def test_decoder_starts_from_encoder_final_state() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, decoder_layers=1,
                    bidirectional=False)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    enc = model.encode(src, lengths)
    state = model.init_state(enc)
    assert torch.equal(state.hidden, enc.final_hidden)
    # the final state of the padded sentence is that at its last real token, not at padding
    assert torch.allclose(state.hidden[0, 1], enc.memory[1, 3], atol=1e-6)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_input_feeding_is_wired(input_feeding: bool) -> None:
    """Changing h~_{t-1} changes the next output exactly when input feeding is on."""
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, decoder_layers=1,
                    input_feeding=input_feeding, dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    state = model.init_state(model.encode(src, lengths))
    prev = torch.tensor([2, 2])
    out_a, _, _ = model.step(prev, state.select(torch.arange(2)))
    changed = state.select(torch.arange(2))
    changed.input_feed = torch.randn_like(changed.input_feed)
    out_b, _, _ = model.step(prev, changed)
    assert (not torch.allclose(out_a, out_b)) == input_feeding


def test_step_by_step_equals_teacher_forced_forward() -> None:
    for feeding in (True, False):
        cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=2, decoder_layers=2,
                        input_feeding=feeding, attention="additive", dropout=0.0)
        model = build_model(cfg, 30, 30).eval()
        src, lengths = _batch()
        tgt_in = torch.randint(4, 30, (2, 5))
        full, full_attn = model(src, lengths, tgt_in)
        state = model.init_state(model.encode(src, lengths))
        for t in range(5):
            lp, attn, state = model.step(tgt_in[:, t], state)
            assert torch.allclose(lp, full[:, t], atol=1e-5)
            assert torch.allclose(attn, full_attn[:, t], atol=1e-6)


def test_source_reversal_keeps_memory_aligned_to_source_positions() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, bidirectional=False,
                    reverse_source=True, dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    enc = model.encode(src, lengths)
    # reading backwards, the state at source position 0 has seen the whole sentence: it is final
    assert torch.allclose(enc.memory[0, 0], enc.final_hidden[0, 0], atol=1e-6)
    assert torch.allclose(enc.memory[1, 0], enc.final_hidden[0, 1], atol=1e-6)
    plain = build_model(cfg.model_copy(update={"reverse_source": False}), 30, 30).eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.encode(src, lengths).memory, enc.memory)


def test_no_attention_is_plain_seq2seq() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, attention="none", dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    log_probs, attention = model(src, lengths, torch.randint(4, 30, (2, 3)))
    assert attention is None
    assert log_probs.shape == (2, 3, 30)
    assert model.decoder.attention is None and model.decoder.combine is None
