import pytest
import torch

from nmtkit.config import RNNConfig
from nmtkit.model import build_model
from nmtkit.rnn import Bridge


def _batch():
    torch.manual_seed(1)
    src = torch.randint(4, 30, (2, 6))
    src[1, 4:] = 0
    return src, torch.tensor([6, 4])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("mode", ["concat", "sum", "mean", "max"])
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
    final = torch.stack([torch.full((1, 3), 1.0), torch.full((1, 3), -3.0)])  # (2 dirs, 1, 3)
    assert torch.allclose(Bridge("sum", 3, 1, True, True)(final), torch.full((1, 1, 3), -2.0))
    assert torch.allclose(Bridge("mean", 3, 1, True, True)(final), torch.full((1, 1, 3), -1.0))
    assert torch.allclose(Bridge("max", 3, 1, True, True)(final), torch.full((1, 1, 3), 1.0))
    assert Bridge("concat", 3, 1, True, True)(final).shape == (1, 1, 3)
    assert torch.equal(Bridge("concat", 3, 1, False, True)(final), final)


def test_lstm_cell_state_has_its_own_unsquashed_bridge_per_layer() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=6, encoder_layers=2, decoder_layers=2,
                    bidirectional=True, bridge="concat")
    decoder = build_model(cfg, 30, 30).decoder
    hidden, cell = decoder.hidden_bridge, decoder.cell_bridge
    assert cell is not None and hidden is not cell
    # one map per layer and per kind of state, none shared
    weights = [p.data_ptr() for b in (hidden, cell) for proj in b.proj for p in proj.parameters()]
    assert len(weights) == 8 and len(set(weights)) == 8
    big = torch.full((4, 1, 6), 50.0)  # (layers * directions, batch, hidden): large cell values
    with torch.no_grad():
        for proj in cell.proj:
            proj.weight.copy_(torch.eye(6).repeat(1, 2) / 2)  # the mean of the two directions
            proj.bias.zero_()
    assert torch.allclose(cell(big), torch.full((2, 1, 6), 50.0))  # not squashed into (-1, 1)
    assert hidden(big).abs().max() <= 1.0  # the hidden state's range: tanh
    gru = build_model(cfg.model_copy(update={"cell": "gru"}), 30, 30).decoder
    assert gru.cell_bridge is None


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
    out_a, _ = model.step(prev, state.select(torch.arange(2)))
    if not input_feeding:
        assert state.input_feed is None and model.decoder.rnn.input_size == 8
        return
    changed = state.select(torch.arange(2))
    changed.input_feed = torch.randn_like(changed.input_feed)
    out_b, _ = model.step(prev, changed)
    assert not torch.allclose(out_a, out_b)


@pytest.mark.parametrize("attention, feeding", [("concat", True), ("concat", False),
                                                ("general", True), ("bahdanau", False)])
def test_step_by_step_equals_teacher_forced_forward(attention: str, feeding: bool) -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=2, decoder_layers=2,
                    input_feeding=feeding, attention=attention, dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    tgt_in = torch.randint(4, 30, (2, 5))
    full, full_attn = model(src, lengths, tgt_in), model.attention(src, lengths, tgt_in)[0, :, 0]
    state = model.init_state(model.encode(src, lengths))
    for t in range(5):
        _, attn, _ = model.decoder._step(tgt_in[:, t], state.select(torch.arange(2)))
        scores, state = model.step(tgt_in[:, t], state)
        lp = torch.log_softmax(scores, -1)
        assert torch.allclose(lp, full[:, t], atol=1e-5)
        assert torch.allclose(attn, full_attn[:, t], atol=1e-6)


def test_source_reversal_reads_the_words_backwards_then_eos() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, bidirectional=False,
                    reverse_source=True, dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    read: list[torch.Tensor] = []
    model.encoder.embedding.register_forward_hook(lambda m, inp, out: read.append(inp[0].clone()))
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])  # "A B C </s>", "D E </s> <pad>"
    model.encode(src, torch.tensor([4, 3]))
    assert read[0].tolist() == [[7, 6, 5, 3], [9, 8, 3, 0]]  # </s> stays last, padding stays


def test_source_reversal_keeps_memory_aligned_to_source_positions() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, bidirectional=False,
                    reverse_source=True, dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    enc = model.encode(src, lengths)
    # reading backwards, the words end at source position 0 and then comes </s>, the final state
    assert torch.allclose(enc.memory[0, 5], enc.final_hidden[0, 0], atol=1e-6)
    assert torch.allclose(enc.memory[1, 3], enc.final_hidden[0, 1], atol=1e-6)
    plain = build_model(cfg.model_copy(update={"reverse_source": False}), 30, 30).eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.encode(src, lengths).memory, enc.memory)


def test_no_attention_is_plain_seq2seq() -> None:
    cfg = RNNConfig(embed_size=8, hidden_size=12, attention="none", dropout=0.0)
    model = build_model(cfg, 30, 30).eval()
    src, lengths = _batch()
    tgt_in = torch.randint(4, 30, (2, 3))
    log_probs = model(src, lengths, tgt_in)
    assert model.attention(src, lengths, tgt_in) is None
    assert log_probs.shape == (2, 3, 30)
    assert model.decoder.attention is None and model.decoder.combine is None


def test_bahdanau_queries_with_the_previous_state_and_feeds_the_context_in() -> None:
    """Bahdanau: c_t comes from s_{t-1}, before the RNN reads y_{t-1}, and enters the RNN.
    Luong: the attention is computed from h_t, after the RNN has read y_{t-1}."""
    src, lengths = _batch()
    for kind in ("bahdanau", "concat"):
        torch.manual_seed(0)
        cfg = RNNConfig(embed_size=8, hidden_size=12, encoder_layers=1, decoder_layers=2,
                        attention=kind, dropout=0.0)
        model = build_model(cfg, 30, 30).eval()
        state = model.init_state(model.encode(src, lengths))
        _, attn_a, _ = model.decoder._step(torch.tensor([5, 6]), state.select(torch.arange(2)))
        _, attn_b, _ = model.decoder._step(torch.tensor([7, 8]), state.select(torch.arange(2)))
        # only a Luong attention depends on the token just read
        assert torch.allclose(attn_a, attn_b) == (kind == "bahdanau")
    decoder = build_model(RNNConfig(embed_size=8, hidden_size=12, attention="bahdanau"), 30, 30).decoder
    assert decoder.rnn.input_size == 8 + 24  # [emb(y_{t-1}); c_t], c_t of the bidirectional memory
    assert not decoder.input_feeding
    # the query is s_{t-1}: the attention at step t equals the attention module applied to it
    state = decoder.init_state(build_model(RNNConfig(embed_size=8, hidden_size=12,
                                                     attention="bahdanau"), 30, 30).encode(src, lengths))
    _, weights, _ = decoder._step(torch.tensor([5, 6]), state.select(torch.arange(2)))
    _, expected = decoder.attention(state.hidden[-1].unsqueeze(1), state.keys, state.memory, state.src_mask)
    assert torch.allclose(weights, expected.squeeze(1))


def test_input_feeding_needs_a_luong_attention() -> None:
    from nmtkit.config import config_from_dict
    from nmtkit.errors import NMTKitError

    assert RNNConfig(attention="general").input_feeding is True
    assert RNNConfig(attention="bahdanau").input_feeding is False
    assert RNNConfig(attention="none").input_feeding is False
    with pytest.raises(NMTKitError, match="model.input_feeding: .*Bahdanau attention feeds"):
        config_from_dict({"data": {"train_src": "a", "train_tgt": "b", "valid_src": "c", "valid_tgt": "d"},
                          "model": {"type": "rnn", "attention": "bahdanau", "input_feeding": True}})


BF16_CELLS = """
import torch
from nmtkit.config import RNNConfig
from nmtkit.model import build_model
for cell in ("lstm", "gru"):
    cfg = RNNConfig(cell=cell, embed_size=8, hidden_size=12, encoder_layers=2, decoder_layers=2,
                    bidirectional=True, input_feeding=True)
    model = build_model(cfg, 30, 30)
    src = torch.randint(4, 30, (2, 6))
    tgt = torch.randint(4, 30, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(src, torch.tensor([6, 4]), tgt, target=tgt)
    loss.backward()
    assert torch.isfinite(loss), loss
    grads = [p.grad for n, p in model.named_parameters() if ".rnn." in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
print("ok")
"""


def test_bf16_autocast_trains_the_cells_on_a_cpu_without_native_bf16() -> None:
    """oneDNN has no bf16 LSTM/GRU below AVX512-BF16: under the AVX2 settings autocast used to
    stop at the first update ("could not create a primitive descriptor for the LSTM forward
    propagation primitive"); the cells now run in fp32 there."""
    import os
    import subprocess
    import sys

    from nmtkit.cpu import AVX2_SETTINGS

    env = {**os.environ, **AVX2_SETTINGS}
    out = subprocess.run([sys.executable, "-c", BF16_CELLS], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == "ok"
