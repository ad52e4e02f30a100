"""The Transformer's building blocks (Vaswani et al. 2017), shared by every model made of them.

    attention(q, k, v) = softmax(q k^T / sqrt(head_dim)) v      on `heads` slices side by side
    SelfAttention      a sequence attends to itself (with a key/value cache for search)
    CrossAttention     the decoder's positions attend to the encoder's memory
    FeedForward        the same two-layer network (ReLU, GELU or swish) at every position
    Residual           x + dropout(f(LN(x))) (pre-norm) or LN(x + dropout(f(x))) (post-norm)
    EncoderLayer       self-attention, feed-forward
    DecoderLayer       masked self-attention, [cross-attention,] feed-forward

The encoder-decoder Transformer (`transformer.py`), the decoder-only model (`decoder_only.py`,
its decoder layers without cross-attention) and the Vision Transformer (`vit.py`, encoder
layers over image patches) are these blocks arranged three ways.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.config import TransformerBlocks
from nmtkit.cpu import bf16_emulated
from nmtkit.dropout import Dropout, dropout
from nmtkit.vocabulary import PAD_ID

KeyValue = tuple[Tensor, Tensor]  # attention keys and values (shapes given where used)


class MultiHeadAttention(nn.Module):
    """What self- and cross-attention share: `heads` attentions side by side, each on its own
    d_model / heads slice of the projected queries, keys and values, then concatenated and mixed
    by an output projection.

        attention(q, k, v) = softmax(q k^T / sqrt(head_dim)) v
    """

    def __init__(self, cfg: TransformerBlocks) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.attention_dropout
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        x = x.view(batch, length, self.heads, d_model // self.heads)
        return x.transpose(1, 2)  # (batch, heads, len, head_dim)

    def merge_heads(self, context: Tensor) -> Tensor:
        batch, heads, length, head_dim = context.shape
        context = context.transpose(1, 2).reshape(batch, length, heads * head_dim)
        return self.out_proj(context)  # (batch, len, d_model)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q (batch, heads, q_len, head_dim); k, v (batch, heads, k_len, head_dim); mask
        broadcasts to (batch, heads, q_len, k_len), True where a query may look at a key."""
        dropout_p = self.dropout if self.training else 0.0
        if unfused_trains_faster(q, k):
            context, _ = attention_by_hand(q, k, v, mask, dropout_p)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return self.merge_heads(context)

    def attend_with_weights(self, q: Tensor, k: Tensor, v: Tensor,
                            mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """attend, by hand, to also return the weights (batch, heads, q_len, k_len): the fused
        kernel cannot give them."""
        context, weights = attention_by_hand(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.merge_heads(context), weights


def attention_by_hand(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                      dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(head_dim)) v, spelled out: the context (batch, heads, q_len,
    head_dim) and the weights (batch, heads, q_len, k_len). Shapes and mask as in `attend`."""
    scores = (q @ k.transpose(-2, -1)).mul_(q.size(-1) ** -0.5)  # (batch, heads, q_len, k_len)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))  # in place: a search step calls this per layer
    weights = scores.softmax(dim=-1)
    context = (dropout(weights, dropout_p) if dropout_p else weights) @ v
    return context, weights


# Past this, the weights kept for the backward, (batch, heads, q_len, k_len), grow with the square
# of the length; the fused kernel keeps none. By hand was still 1.8x as fast at 250 positions.
UNFUSED_MAX_LEN = 256


def unfused_trains_faster(q: Tensor, k: Tensor) -> bool:
    """Whether to train this attention by hand (`attention_by_hand`) instead of with SDPA's
    fused kernel.

    On the CPU in bf16, the fused (flash) kernel's backward is slow at sentence lengths: a
    forward and backward over 292 x 14 tokens took 43 ms against 6 ms by hand, and attention
    took a quarter of the Multi30k Transformer's bf16 update. SDPA's own unfused (math) kernel
    is in between (14 ms) and upcasts to fp32, keeping copies for the backward: a bf16 run's
    resident memory grew by 0.8 GB with it (`benchmarks/bench_attention.py`). In fp32 the fused
    kernel trains fastest, and so it does in bf16 on a CPU without native bf16 (AVX2), where
    bf16 matrix products are emulated: there by hand took 1,095 ms against the fused kernel's
    252 (292 x 14 tokens, ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)."""
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad  # training
            and max(q.size(-2), k.size(-2)) <= UNFUSED_MAX_LEN and not bf16_emulated("cpu"))


class _Storage:
    """Room for the keys and values of `rows` batch rows and `capacity` positions, each
    (rows, capacity, d_model), and a count of the writes into it."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys, self.values = keys, values
        self.writes = 0

    @staticmethod
    def like(t: Tensor, rows: int, positions: int, reserve: int = 0) -> _Storage:
        """Storage for `rows` rows: room for `reserve` positions, or, past that, to grow well
        past `positions`."""
        capacity = reserve if positions <= reserve else max(16, 2 * positions)
        return _Storage(t.new_empty(rows, capacity, t.size(-1)), t.new_empty(rows, capacity, t.size(-1)))

    def fits(self, rows: int, capacity: int) -> bool:
        return self.keys.size(0) >= rows and self.keys.size(1) >= capacity


class KVCache:
    """One decoder layer's self-attention keys and values for the target prefix so far.

    Search adds one position per step and then reorders the beams. Growing the cache with
    torch.cat would copy the whole prefix at every step, and a fresh tensor per step pays page
    faults on first touch (the cache runs to megabytes). So the cache lives in preallocated
    storage, with room for the longest output when search says what that is (`reserve`): a new
    position is written in place (the room doubles when full). A reorder (`select`) that moves
    few rows, as beam search's do (most beams stay in their parent's row), copies just those
    rows in place; one that moves most copies the prefix once, into the storage of the cache it
    was selected from a step earlier: two storages take turns, allocated once.

    The price: a cache, like the decoder state that holds it, is used once. `append` and
    `select` write into storage that older caches point to, so using a cache after such a write
    raises an error instead of silently reading overwritten keys.

    Heads are not split in storage, (rows, capacity, d_model), so that each row's prefix is one
    contiguous block for the reorder to copy.
    """

    def __init__(self, storage: _Storage | None = None, rows: int = 0, length: int = 0,
                 spare: _Storage | None = None, reserve: int = 0) -> None:
        self.storage = storage
        self.rows = rows  # the batch: storage rows in use
        self.length = length  # positions in use
        self.spare = spare  # storage that `select` may overwrite
        self.reserve = reserve  # positions to make room for at once (search knows its longest)
        self.writes = storage.writes if storage is not None else 0

    def keys_values(self) -> KeyValue:
        """Keys and values of the cached positions, each (rows, length, d_model)."""
        storage = self._checked()
        return storage.keys[: self.rows, : self.length], storage.values[: self.rows, : self.length]

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        """The cache with k, v (rows, new_len, d_model) added after its positions."""
        rows, start, end = k.size(0), self.length, self.length + k.size(1)
        if torch.is_grad_enabled():
            # training through search steps (scheduled sampling): autograd needs new tensors
            if self.storage is not None:
                old_k, old_v = self.keys_values()
                k, v = torch.cat([old_k, k], dim=1), torch.cat([old_v, v], dim=1)
            return KVCache(_Storage(k, v), rows, end)
        storage = self._checked()
        if storage is None or not storage.fits(rows, end):
            storage = _Storage.like(k, rows, end, self.reserve)
            if self.storage is not None:
                old_k, old_v = self.keys_values()
                storage.keys[:, :start], storage.values[:, :start] = old_k, old_v
        storage.keys[:rows, start:end], storage.values[:rows, start:end] = k, v
        storage.writes += 1
        return KVCache(storage, rows, end, self.spare, self.reserve)

    def select(self, index: Tensor, changed: Tensor | None = None) -> KVCache:
        """The cache of rows `index`: beams reordered, duplicated, or dropped with their sentence.

        `changed` lists the new rows r with index[r] != r, when index is no longer than the
        cache. In beam search most beams keep their own row (see search.beam_search), so it is
        cheaper to copy just the changed rows in place than the whole prefix into the spare."""
        if self.storage is None:
            return KVCache(reserve=self.reserve)
        old_k, old_v = self.keys_values()
        rows = index.size(0)
        if torch.is_grad_enabled():
            return KVCache(_Storage(old_k.index_select(0, index), old_v.index_select(0, index)),
                           rows, self.length)
        if changed is not None and 3 * changed.size(0) < 2 * rows:
            # in place: a gather and a scatter of the changed rows, against one copy of them all
            source = index.index_select(0, changed)
            old_k.index_copy_(0, changed, old_k.index_select(0, source))
            old_v.index_copy_(0, changed, old_v.index_select(0, source))
            self.storage.writes += 1
            return KVCache(self.storage, rows, self.length, self.spare, self.reserve)
        spare = self.spare
        if spare is None or not spare.fits(rows, self.length + 1):  # + 1: room for the next step
            spare = _Storage.like(old_k, rows, self.length + 1, self.reserve)
        torch.index_select(old_k, 0, index, out=spare.keys[:rows, : self.length])
        torch.index_select(old_v, 0, index, out=spare.values[:rows, : self.length])
        spare.writes += 1
        return KVCache(spare, rows, self.length, self.storage, self.reserve)

    def _checked(self) -> _Storage | None:
        if self.storage is not None and self.storage.writes != self.writes:
            raise RuntimeError(
                "this decoder state was already used: a state is stepped or selected from once, "
                "since later steps reuse its cache's storage"
            )
        return self.storage


class SelfAttention(MultiHeadAttention):
    """Each position attends to positions of its own sequence. Queries, keys and values come
    from one fused projection: one matrix multiply instead of three."""

    def __init__(self, cfg: TransformerBlocks) -> None:
        super().__init__(cfg)
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, need_weights: bool = False
    ) -> tuple[Tensor, KVCache | None, Tensor | None]:
        """x (batch, len, d_model). `cache` holds the keys and values of the positions before x
        (the decoder's, in search); it is returned with x's own added. With need_weights, also
        the weights (batch, heads, len, cached + len)."""
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)  # each (batch, len, d_model)
        if cache is not None:
            cache = cache.append(k, v)
            k, v = cache.keys_values()  # (batch, cached + len, d_model)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if need_weights:
            out, weights = self.attend_with_weights(q, k, v, mask)
            return out, cache, weights
        return self.attend(q, k, v, mask), cache, None


class CrossAttention(MultiHeadAttention):
    """The decoder's positions attend to the encoder memory. Keys and values depend only on the
    source, so `memory_kv` computes them once per sentence (fused, as in self-attention).

    In beam search, `group` consecutive rows (a sentence's beams) share one source. Their
    queries then attend to it together, as one longer sequence of queries, and the memory keys
    and values are kept once per sentence instead of once per beam."""

    def __init__(self, cfg: TransformerBlocks) -> None:
        super().__init__(cfg)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * cfg.d_model)

    def memory_kv(self, memory: Tensor) -> KeyValue:
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        # each (batch, heads, src_len, head_dim), contiguous: read at every search step
        return self.split_heads(k).contiguous(), self.split_heads(v).contiguous()

    def forward(
        self, x: Tensor, memory_kv: KeyValue, src_mask: Tensor, need_weights: bool, group: int = 1
    ) -> tuple[Tensor, Tensor | None]:
        """x (batch, tgt_len, d_model); memory_kv and src_mask (batch // group, src_len), True
        at real tokens, hold the source of each `group` consecutive rows. With `need_weights`
        also returns the weights (batch, heads, tgt_len, src_len)."""
        batch, tgt_len, d_model = x.shape
        q = self.q_proj(x).view(batch // group, group * tgt_len, d_model)  # the group's queries
        q = self.split_heads(q)  # (sentences, heads, group * tgt_len, head_dim)
        k, v = memory_kv
        mask = src_mask[:, None, None, :]  # (sentences, 1, 1, src_len): padding is never attended
        if not need_weights and (self.training or tgt_len > 1):
            return self.attend(q, k, v, mask).view(batch, tgt_len, d_model), None
        # By hand: SDPA cannot return the weights, and for a search step (one new position per
        # row: a handful of queries per sentence) its CPU kernel took 3x as long as this (0.52
        # against 0.17 ms at 64 sentences x 5 beams).
        out, weights = self.attend_with_weights(q, k, v, mask)  # weights: (sentences, heads, g * len, src)
        out = out.view(batch, tgt_len, d_model)
        if not need_weights:
            return out, None
        heads, src_len = weights.size(1), weights.size(-1)
        weights = weights.view(batch // group, heads, group, tgt_len, src_len).transpose(1, 2)
        return out, weights.reshape(batch, heads, tgt_len, src_len)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}


class FeedForward(nn.Module):
    """Position-wise: the same two-layer network applied to every position on its own, with
    `activation` between the layers (ReLU as in Vaswani et al.; Marian uses swish)."""

    def __init__(self, cfg: TransformerBlocks) -> None:
        super().__init__()
        self.activation = ACTIVATIONS[cfg.activation]
        self.up = nn.Linear(cfg.d_model, cfg.ff_size)
        self.down = nn.Linear(cfg.ff_size, cfg.d_model)
        self.dropout = Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.activation(self.up(x)))  # (batch, len, ff_size)
        return self.down(hidden)


class Residual(nn.Module):
    """The residual connection around a sublayer f, with dropout on f's output and layer norm:

        pre   x + dropout(f(LN(x)))   trains stably without warm-up; the residual stream is left
                                      unnormalised, so the encoder and decoder end with an LN
        post  LN(x + dropout(f(x)))   the original Transformer

    Split in two so that f may return more than its output (weights, a cache):
    `y = f(residual.before(x)); x = residual.after(x, y)`.
    """

    def __init__(self, cfg: TransformerBlocks) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def after(self, x: Tensor, y: Tensor) -> Tensor:
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.Module):
    """Self-attention over the source, then the feed-forward network."""

    def __init__(self, cfg: TransformerBlocks) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.self_attn_residual = Residual(cfg)
        self.ff = FeedForward(cfg)
        self.ff_residual = Residual(cfg)

    def forward(self, x: Tensor, key_mask: Tensor | None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (batch, src_len, d_model); key_mask (batch, 1, 1, src_len), True at real tokens.
        Returns the new x, and with need_weights the self-attention weights (batch, heads,
        src_len, src_len)."""
        y, _, weights = self.self_attn(self.self_attn_residual.before(x), key_mask, None, need_weights)
        x = self.self_attn_residual.after(x, y)
        return self.ff_residual.after(x, self.ff(self.ff_residual.before(x))), weights


class DecoderLayer(nn.Module):
    """Masked self-attention over the target prefix, attention over the source (unless
    `cross_attention` is off: the decoder-only model has no source memory), feed-forward."""

    def __init__(self, cfg: TransformerBlocks, cross_attention: bool = True) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.self_attn_residual = Residual(cfg)
        self.cross_attn = CrossAttention(cfg) if cross_attention else None
        self.cross_attn_residual = Residual(cfg) if cross_attention else None
        self.ff = FeedForward(cfg)
        self.ff_residual = Residual(cfg)

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None,
        self_mask: Tensor | None,
        memory_kv: KeyValue | None = None,
        src_mask: Tensor | None = None,
        need_weights: bool = False,
        group: int = 1,
    ) -> tuple[Tensor, KVCache | None, Tensor | None]:
        """x (batch, new_len, d_model): the target positions that follow the cache's; self_mask
        broadcasts to (batch, heads, new_len, cached + new_len), True where a position may look.
        Returns the new x, the cache with the new positions added, and, if asked for, the
        cross-attention weights (batch, heads, new_len, src_len), or without cross-attention the
        self-attention weights (batch, heads, new_len, cached + new_len)."""
        y, cache, weights = self.self_attn(self.self_attn_residual.before(x), self_mask, cache,
                                           need_weights and self.cross_attn is None)
        x = self.self_attn_residual.after(x, y)
        if self.cross_attn is not None:
            y, weights = self.cross_attn(
                self.cross_attn_residual.before(x), memory_kv, src_mask, need_weights, group
            )
            x = self.cross_attn_residual.after(x, y)
        x = self.ff_residual.after(x, self.ff(self.ff_residual.before(x)))
        return x, cache, weights


def init_weights(model: nn.Module, d_model: int) -> None:
    """Xavier-uniform linear layers with zero biases, N(0, 1 / d_model) embeddings: after the
    sqrt(d_model) scaling, token embeddings are about the size of the positions."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=d_model**-0.5)
            with torch.no_grad():
                module.weight[PAD_ID].zero_()
