import itertools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from nmtkit.config import TransformerConfig
from nmtkit.errors import NMTKitError
from nmtkit.seq2seq import Seq2Seq
from nmtkit.transformer import TransformerState, build_transformer
from nmtkit.vocabulary import BOS_ID, EOS_ID, PAD_ID

VOCAB = 24


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a busy machine, waiting for them dominates."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, **overrides) -> Seq2Seq:
    """A tiny Transformer in eval mode (no dropout), deterministic per seed."""
    torch.manual_seed(seed)
    settings = dict(d_model=32, heads=4, ff_size=64, encoder_layers=2, decoder_layers=2)
    cfg = TransformerConfig(**(settings | overrides))
    return build_transformer(cfg, VOCAB, VOCAB).eval()


def pad(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (batch, max_len) padded with PAD_ID, and the lengths."""
    lengths = torch.tensor([len(s) for s in sentences])
    batch = torch.full((len(sentences), int(lengths.max())), PAD_ID)
    for i, s in enumerate(sentences):
        batch[i, : len(s)] = torch.tensor(s)
    return batch, lengths


def random_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src (4, 7) and tgt_in (4, 6) with sentences of different lengths, so both are padded."""
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(4, VOCAB, (n,), generator=g).tolist() + [EOS_ID] for n in (6, 3, 4, 1)]
    tgt = [[BOS_ID] + torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in (5, 2, 3, 4)]
    src_batch, src_lengths = pad(src)
    tgt_in, _ = pad(tgt)
    return src_batch, src_lengths, tgt_in


def test_decoder_is_causal() -> None:
    model = make_model()
    src, src_lengths, tgt_in = random_batch()
    changed = tgt_in.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % VOCAB  # rewrite the future from position 3 on
    with torch.no_grad():
        before = model(src, src_lengths, tgt_in)
        after = model(src, src_lengths, changed)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 3:], before[:, 3:], atol=1e-3)  # the change is visible


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_does_not_change_outputs(norm: str) -> None:
    model = make_model(norm=norm)
    src, src_lengths, tgt_in = random_batch()
    tgt_lengths = (tgt_in != PAD_ID).sum(dim=1)
    with torch.no_grad():
        batched, batched_attention = model(src, src_lengths, tgt_in), model.attention(src, src_lengths, tgt_in)
        for i in range(src.size(0)):
            s, t = int(src_lengths[i]), int(tgt_lengths[i])
            one = (src[i : i + 1, :s], src_lengths[i : i + 1], tgt_in[i : i + 1, :t])
            alone, alone_attention = model(*one), model.attention(*one)
            torch.testing.assert_close(batched[i, :t], alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched_attention[:, i, :, :t, :s], alone_attention[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "none"])
def test_cached_steps_equal_full_recomputation(positional: str) -> None:
    model = make_model(positional=positional)
    src, src_lengths, tgt_in = random_batch()
    reorder = torch.tensor([2, 0, 0, 3])  # as beam search does: reorder and duplicate rows
    with torch.no_grad():
        full = model(src, src_lengths, tgt_in)
        state = model.init_state(model.encode(src, src_lengths))
        rows = torch.arange(src.size(0))
        for t in range(tgt_in.size(1)):
            if t == 3:
                state = state.select(reorder)
                rows = rows[reorder]
            scores, state = model.step(tgt_in[rows, t], state)
            torch.testing.assert_close(F.log_softmax(scores, -1), full[rows, t], atol=1e-5, rtol=0)
            # the cache grows by one position per step: the prefix is not recomputed
            assert state.position == t + 1
            assert all(cache.length == t + 1 for cache in state.self_kv)


def test_tied_and_shared_weights_survive_safetensors(tmp_path) -> None:
    model = make_model(share_embeddings=True, tie_output=True)
    embedding = model.decoder.embedding
    assert model.encoder.embedding is embedding
    assert model.generator.weight is embedding.weight
    assert model.generator.weight.data_ptr() == model.encoder.embedding.weight.data_ptr()

    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    loaded = make_model(seed=1, share_embeddings=True, tie_output=True)  # different weights
    load_model(loaded, str(path))
    assert loaded.generator.weight is loaded.decoder.embedding.weight
    assert loaded.encoder.embedding is loaded.decoder.embedding
    src, src_lengths, tgt_in = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, src_lengths, tgt_in), model(src, src_lengths, tgt_in))


def test_untied_weights_are_separate() -> None:
    model = make_model(share_embeddings=False, tie_output=False)
    assert model.encoder.embedding is not model.decoder.embedding
    assert model.generator.weight.data_ptr() != model.decoder.embedding.weight.data_ptr()


def test_overfits_a_few_pairs() -> None:
    # the task: copy the source in reverse, shifted by one token id
    g = torch.Generator().manual_seed(0)
    sources = [torch.randint(4, VOCAB - 1, (n,), generator=g).tolist() for n in (3, 4, 5, 6, 4, 5)]
    targets = [[token + 1 for token in reversed(s)] for s in sources]
    src, src_lengths = pad([s + [EOS_ID] for s in sources])
    tgt_in, _ = pad([[BOS_ID] + t for t in targets])
    tgt_out, _ = pad([t + [EOS_ID] for t in targets])

    model = make_model(encoder_layers=1, decoder_layers=1, dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        log_probs = model(src, src_lengths, tgt_in)
        loss = F.nll_loss(log_probs.transpose(1, 2), tgt_out, ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break

    model.eval()
    with torch.no_grad():
        state = model.init_state(model.encode(src, src_lengths))
        prev = torch.full((src.size(0),), BOS_ID)
        outputs = []
        for _ in range(tgt_out.size(1)):
            scores, state = model.step(prev, state)
            prev = scores.argmax(dim=-1)
            outputs.append(prev)
    decoded = torch.stack(outputs, dim=1).tolist()
    for hypothesis, target in zip(decoded, targets, strict=True):
        assert hypothesis[: hypothesis.index(EOS_ID)] == target


@pytest.mark.parametrize(
    "norm, positional, sharing",
    list(itertools.product(["pre", "post"], ["sinusoidal", "learned", "none"], ["none", "tied", "shared"])),
)
def test_shapes_for_every_option(norm: str, positional: str, sharing: str) -> None:
    model = make_model(
        norm=norm,
        positional=positional,
        tie_output=sharing != "none",
        share_embeddings=sharing == "shared",
        encoder_layers=1,
        decoder_layers=1,
    )
    src, src_lengths, tgt_in = random_batch()
    batch, src_len, tgt_len = src.size(0), src.size(1), tgt_in.size(1)
    with torch.no_grad():
        log_probs = model(src, src_lengths, tgt_in)
        assert log_probs.shape == (batch, tgt_len, VOCAB)
        assert model.attention(src, src_lengths, tgt_in).shape == (1, batch, 4, tgt_len, src_len)
        state = model.init_state(model.encode(src, src_lengths))
        scores, state = model.step(tgt_in[:, 0], state)
        assert scores.shape == (batch, VOCAB)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_too_long_input_is_an_error(positional: str) -> None:
    model = make_model(positional=positional, max_positions=8)
    src, src_lengths = pad([[5] * 8 + [EOS_ID]])
    with pytest.raises(NMTKitError, match="max_positions"):
        model.encode(src, src_lengths)
    # in search, the step that reaches position max_positions fails the same way
    src, src_lengths = pad([[5, EOS_ID]])
    state = model.init_state(model.encode(src, src_lengths))
    with torch.no_grad():
        for _ in range(8):
            _, state = model.step(torch.tensor([5]), state)
        with pytest.raises(NMTKitError, match="max_positions"):
            model.step(torch.tensor([5]), state)


def test_no_positions_have_no_length_limit() -> None:
    model = make_model(positional="none", max_positions=8)
    src, src_lengths = pad([[5] * 20 + [EOS_ID]])
    assert model.encode(src, src_lengths).memory.shape == (1, 21, 32)


def test_heads_must_divide_d_model() -> None:
    from nmtkit.config import config_from_dict

    data = {"train_src": "a", "train_tgt": "b", "valid_src": "c", "valid_tgt": "d"}
    with pytest.raises(NMTKitError, match="model.heads: 4 does not divide d_model"):
        config_from_dict({"data": data, "model": {"type": "transformer", "d_model": 30, "heads": 4}})


@pytest.mark.avx2
def test_cross_attention_is_a_distribution_over_real_tokens() -> None:
    model = make_model()
    src, src_lengths, tgt_in = random_batch()
    padding = (src == PAD_ID)[None, :, None, None, :]  # (1, batch, 1, 1, src_len)
    with torch.no_grad():
        weights = model.attention(src, src_lengths, tgt_in)  # (layers, batch, heads, tgt, src)
    assert weights.shape == (2, 4, 4, tgt_in.size(1), src.size(1))
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]))
    assert (weights.masked_select(padding.expand_as(weights)) == 0).all()


REORDERS = {  # index into 4 sentences x 2 beams, and then: rows per sentence, source copies
    "within": ([1, 0, 3, 2, 5, 4, 7, 6], 2, 4),  # beams swap inside each sentence
    "few": ([0, 0, 2, 3, 4, 5, 7, 7], 2, 4),  # two beams change: copied in place
    "drop": ([0, 0, 4, 5, 6, 6], 2, 3),  # sentence 1 finished and left
    "reversed": ([7, 6, 5, 4, 3, 2, 1, 0], 2, 4),  # sentences in another order
    "mixed": ([0, 2, 1, 3], 1, 4),  # not side by side: a source copy per row
    "uneven": ([0, 1, 2], 1, 3),  # two rows of sentence 0, one of sentence 1: a copy per row
}


@pytest.mark.parametrize("name", list(REORDERS))
def test_beam_reorders_keep_the_source_once_per_sentence(name: str) -> None:
    """The cross-attention keys/values stay one per sentence while a sentence's rows sit side
    by side (copied only when sentences leave or move), and the next step equals a state that
    holds a copy of the source for every row."""
    index, group, copies = REORDERS[name]
    index = torch.tensor(index)
    model = make_model().eval()
    src, lengths, tgt_in = random_batch()
    prev = tgt_in.repeat_interleave(2, 0)[:, 1][index]

    def two_beams_after_a_step() -> TransformerState:
        state = model.init_state(model.encode(src, lengths))
        beams = state.select(torch.arange(src.size(0)).repeat_interleave(2))
        assert beams.group == 2 and beams.cross_kv is state.cross_kv  # no copy per beam
        _, beams = model.step(tgt_in.repeat_interleave(2, 0)[:, 0], beams)
        return beams

    with torch.no_grad():
        beams = two_beams_after_a_step()
        selected = beams.select(index)
        assert selected.group == group and selected.src_mask.size(0) == copies
        assert (selected.cross_kv is beams.cross_kv) == (name in ("within", "few"))
        in_place = selected.self_kv[0].storage is beams.self_kv[0].storage
        assert in_place == (name in ("few", "mixed", "uneven"))  # under two thirds of the rows move
        out, _ = model.step(prev, selected)

        beams = two_beams_after_a_step()
        row_source = index // beams.group  # every row with its own copy of its source
        full = TransformerState(
            beams.position, [cache.select(index) for cache in beams.self_kv],
            [(k[row_source], v[row_source]) for k, v in beams.cross_kv], beams.src_mask[row_source],
        )
        out_full, _ = model.step(prev, full)
    torch.testing.assert_close(out, out_full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("reorder", [[1, 0, 3, 2], [0, 0, 2, 2]])
def test_cache_storage_is_reused_and_a_used_state_is_refused(reorder: list[int]) -> None:
    """A reorder that moves most rows copies the prefix into the storage the cache had a step
    before (two storages take turns); one that moves few copies those rows in place. Positions
    are written in place, the steps equal a full pass, and a stale state raises."""
    in_place = reorder == [0, 0, 2, 2]  # rows 1 and 3 change: 2 of 4
    model = make_model().eval()
    src, lengths, tgt_in = random_batch()
    index = torch.tensor(reorder)
    with torch.no_grad():
        state = model.init_state(model.encode(src, lengths))
        storages, rows = set(), torch.arange(4)
        for t in range(tgt_in.size(1)):
            _, stepped = model.step(tgt_in[rows, t], state)
            assert stepped.self_kv[0].storage is state.self_kv[0].storage or t == 0
            state = stepped.select(index)
            rows = rows[index]
            expected = stepped.self_kv[0].storage if in_place else stepped.self_kv[0].spare
            assert state.self_kv[0].storage is expected or t == 0
            storages.add(id(state.self_kv[0].storage))
        assert len(storages) == (1 if in_place else 2)  # all fits the initial room
        scores, _ = model.step(tgt_in[rows, 0], state)
        full = model(src[rows], lengths[rows], torch.cat([tgt_in[rows], tgt_in[rows, :1]], 1))
        torch.testing.assert_close(F.log_softmax(scores, -1), full[:, -1], atol=1e-5, rtol=0)
        with pytest.raises(RuntimeError, match="already used"):
            model.step(tgt_in[:, 0], state)  # its newest position was overwritten
        if in_place:
            with pytest.raises(RuntimeError, match="already used"):
                model.step(tgt_in[:, 0], stepped)  # the reorder rewrote its rows


def test_cache_grows_past_its_initial_room() -> None:
    """40 cached steps (the storage starts with room for 16 and doubles) equal one full pass."""
    model = make_model().eval()
    src, src_lengths, _ = random_batch()
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), torch.randint(4, VOCAB, (4, 39))], dim=1)
    with torch.no_grad():
        full = model(src, src_lengths, tgt_in)
        state = model.init_state(model.encode(src, src_lengths))
        for t in range(tgt_in.size(1)):
            scores, state = model.step(tgt_in[:, t], state)
            torch.testing.assert_close(F.log_softmax(scores, -1), full[:, t], atol=1e-5, rtol=0)
    assert state.self_kv[0].storage.keys.size(1) >= 40


def test_a_state_told_its_longest_output_never_grows_its_cache() -> None:
    """init_state(enc, max_len) makes room for max_len positions at once: 40 steps write into
    one storage (no copy to a bigger one midway), with the same outputs as a full pass."""
    model = make_model().eval()
    src, src_lengths, _ = random_batch()
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), torch.randint(4, VOCAB, (4, 39))], dim=1)
    with torch.no_grad():
        full = model(src, src_lengths, tgt_in)
        state = model.init_state(model.encode(src, src_lengths), max_len=40)
        storages = set()
        for t in range(tgt_in.size(1)):
            scores, state = model.step(tgt_in[:, t], state)
            torch.testing.assert_close(F.log_softmax(scores, -1), full[:, t], atol=1e-5, rtol=0)
            storages.add(id(state.self_kv[0].storage))
    assert len(storages) == 1 and state.self_kv[0].storage.keys.size(1) == 40


def test_feeding_own_predictions_trains_through_the_cache() -> None:
    """teacher_forcing_ratio 0 runs the cached steps with autograd on: the outputs equal a
    no-grad replay of the tokens it fed itself (sampled from its own distribution, never the
    gold ones) and gradients reach the decoder's self-attention."""
    model = make_model()
    src, src_lengths, tgt_in = random_batch()
    fed: list[torch.Tensor] = []
    hook = model.decoder.embedding.register_forward_hook(lambda m, i, o: fed.append(i[0].clone()))
    log_probs = model(src, src_lengths, tgt_in, teacher_forcing_ratio=0.0)
    hook.remove()
    log_probs.sum().backward()
    assert model.decoder.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0
    assert not torch.equal(torch.cat(fed[1:], 1), tgt_in[:, 1:])  # its own tokens, not the gold
    with torch.no_grad():
        state = model.init_state(model.encode(src, src_lengths))
        for t in range(tgt_in.size(1)):
            replay, state = model.step(fed[t].squeeze(1), state)
            torch.testing.assert_close(F.log_softmax(replay, -1), log_probs[:, t].detach(), atol=1e-5, rtol=0)


def test_selecting_no_rows_gives_an_empty_state() -> None:
    model = make_model().eval()
    src, lengths, tgt_in = random_batch()
    with torch.no_grad():
        state = model.init_state(model.encode(src, lengths))
        _, state = model.step(tgt_in[:, 0], state)
        empty = state.select(torch.zeros(0, dtype=torch.long))
    assert empty.src_mask.size(0) == 0 and empty.cross_kv[0][0].size(0) == 0
    assert all(cache.rows == 0 and cache.keys_values()[0].size(0) == 0 for cache in empty.self_kv)


@pytest.mark.avx2
def test_bf16_training_attends_unfused_with_the_fused_kernels_result(monkeypatch) -> None:
    """In bf16 training on the CPU, attention at sentence lengths is computed by hand (the fused
    kernel's backward is slow there); it must give what the fused kernel gives, masks included."""
    from torch.profiler import profile

    from nmtkit import transformer_layers
    from nmtkit.transformer_layers import UNFUSED_MAX_LEN, unfused_trains_faster

    monkeypatch.setattr(transformer_layers, "bf16_emulated", lambda device: False)  # as with AVX512-BF16
    model = make_model().train()
    layer = model.encoder.layers[0].self_attn
    layer.dropout = 0.0  # the two kernels draw different dropout masks
    src, lengths, _ = random_batch()
    x = torch.randn(src.size(0), src.size(1), 32, dtype=torch.bfloat16)
    mask = (src != PAD_ID)[:, None, None, :]

    def run(fused: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        inputs = x.clone().requires_grad_()
        if fused:
            monkeypatch.setattr(transformer_layers, "unfused_trains_faster", lambda q, k: False)
        with torch.autocast("cpu", dtype=torch.bfloat16), profile() as prof:
            out, _, _ = layer(inputs, mask)
        out.float().square().sum().backward()
        return out.float(), inputs.grad.float(), [e.key for e in prof.key_averages()]

    out, grad, ops = run(fused=False)
    fused_out, fused_grad, fused_ops = run(fused=True)
    assert "aten::scaled_dot_product_attention" not in ops and "aten::softmax" in ops
    assert "aten::scaled_dot_product_attention" in fused_ops
    torch.testing.assert_close(out, fused_out, atol=0.05, rtol=0.05)
    torch.testing.assert_close(grad, fused_grad, atol=0.05, rtol=0.05)

    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    long = torch.randn(2, 4, UNFUSED_MAX_LEN + 1, 8)
    assert unfused_trains_faster(q.bfloat16(), q)
    assert not unfused_trains_faster(q, q)  # fp32: the fused kernel is faster
    assert not unfused_trains_faster(q.bfloat16(), long)
    with torch.no_grad():
        assert not unfused_trains_faster(q.bfloat16(), q)
    monkeypatch.setattr(transformer_layers, "bf16_emulated", lambda device: True)  # AVX2
    assert not unfused_trains_faster(q.bfloat16(), q)  # emulated bf16: the fused kernel is faster
