# %% [markdown]
# # 4. The Transformer's parts
#
# The seed note builds the Transformer from a few parts: scaled dot-product attention, several
# heads side by side, masks, positional encodings, and residual connections with layer norm.
# This tutorial runs each part of nmtkit on a real sentence, so you can open the code next to it:
#
# | part | where |
# |---|---|
# | `softmax(q k^T / sqrt(d)) v` | `nmtkit/transformer_layers.py`: `attention_by_hand` |
# | heads | `MultiHeadAttention.split_heads` / `merge_heads` |
# | an encoder layer | `EncoderLayer` (self-attention, then the feed-forward network) |
# | pre- and post-norm | `Residual` |
# | positions | `nmtkit/embeddings.py`: `sinusoids`, `PositionalEncoding` |
#
# The layers here are freshly initialised, not trained: this tutorial is about the mechanics
# (shapes, masks, what positions change), which hold for any weights. It trains nothing, so it
# runs in seconds and the budget switch (`NMTKIT_TUTORIAL_BUDGET`) does not change it.

# %%
import matplotlib.pyplot as plt
import torch

from nmtkit.config import TransformerConfig
from nmtkit.embeddings import PositionalEncoding, sinusoids
from nmtkit.transformer_layers import EncoderLayer, attention_by_hand

torch.manual_seed(0)
sentence = "the cat sat on the mat".split()
d_model, heads = 32, 4
table = {word: torch.randn(d_model) for word in sorted(set(sentence))}
x = torch.stack([table[w] for w in sentence]).unsqueeze(0)  # (batch 1, len 6, d_model)
print("x:", tuple(x.shape))

# %% [markdown]
# ## Scaled dot-product attention
#
# Every position asks a query `q`, compares it with every key `k` (a dot product, divided by
# `sqrt(head_dim)` so that the scores do not grow with the width), turns the scores into weights
# with a softmax, and takes the weighted sum of the values `v`. With `q = k = v = x` (no
# projections yet), a word attends most to itself and to copies of itself: "the" at positions 0
# and 4 are the same vector.

# %%
q = k = v = x.unsqueeze(1)  # (batch, heads 1, len, d_model)
context, weights = attention_by_hand(q, k, v, mask=None)
print("context:", tuple(context.shape), " weights:", tuple(weights.shape))
print("each row sums to 1:", torch.allclose(weights.sum(-1), torch.ones(1, 1, 6)))


def draw(w, title, ax):
    ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(sentence)), sentence, rotation=45)
    ax.set_yticks(range(len(sentence)), sentence)
    ax.set_title(title, fontsize=9)


fig, ax = plt.subplots(figsize=(3, 3))
draw(weights[0, 0], "q = k = v = x", ax)
plt.show()
assert weights[0, 0, 0, 4] > weights[0, 0, 0, 1], "'the' attends to the other 'the' more than to 'cat'"

# %% [markdown]
# ## Masks
#
# A mask says which keys a query may look at (`True`: allowed); the others get a score of `-inf`,
# so a weight of 0. A **padding mask** hides the padding of shorter sentences in a batch; a
# **causal mask** lets a decoder position see only itself and what came before, which is what
# makes teacher forcing honest: the model cannot peek at the word it must predict.

# %%
causal = torch.ones(6, 6, dtype=torch.bool).tril()  # (q_len, k_len)
padding = torch.tensor([True] * 4 + [False] * 2)  # the last two positions are padding
_, w_causal = attention_by_hand(q, k, v, causal)
_, w_padding = attention_by_hand(q, k, v, padding)
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
draw(w_causal[0, 0], "causal mask", axes[0])
draw(w_padding[0, 0], "padding mask (last 2)", axes[1])
plt.tight_layout()
plt.show()
assert torch.all(w_causal[0, 0].triu(1) == 0) and torch.all(w_padding[0, 0, :, 4:] == 0)

# %% [markdown]
# ## Several heads
#
# A layer projects `x` into queries, keys and values, splits them into `heads` slices of
# `d_model / heads` (`split_heads`), attends in each slice on its own, and joins the results
# (`merge_heads`, then an output projection). Each head can look at something different. Here
# are the four heads of one (untrained) encoder layer; `nmtkit plot-attention` and the page draw
# the heads of a trained model the same way.

# %%
cfg = TransformerConfig(d_model=d_model, heads=heads, ff_size=64, dropout=0.0)
layer = EncoderLayer(cfg).eval()
with torch.no_grad():
    out, layer_weights = layer(x, None, need_weights=True)
print("layer output:", tuple(out.shape), " weights (batch, heads, q, k):", tuple(layer_weights.shape))
fig, axes = plt.subplots(1, heads, figsize=(3 * heads, 3))
for h in range(heads):
    draw(layer_weights[0, h], f"head {h}", axes[h])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Positions: what attention cannot see on its own
#
# Attention compares every position with every other, without regard to where they stand.
# Without positional encodings an encoder layer is *permutation-equivariant*: shuffle the words
# and its outputs are shuffled the same way, nothing else changes. "the cat sat on the mat" and
# "the mat sat on the cat" look the same to it. This is the no-positions ablation of the seed
# note (`model.positional: none`); on Multi30k it cost the Transformer 5 BLEU
# ([Ablations](../results/ablations.md)).

# %%
order = torch.tensor([0, 5, 2, 3, 4, 1])  # swap "cat" and "mat"
with torch.no_grad():
    shuffled, _ = layer(x[:, order], None)
print("without positions, shuffled output == shuffled input's output:",
      torch.allclose(shuffled, out[:, order], atol=1e-5))
assert torch.allclose(shuffled, out[:, order], atol=1e-5)

positions = PositionalEncoding("sinusoidal", d_model, max_positions=64)
with torch.no_grad():
    with_pos, _ = layer(positions(x), None)
    with_pos_shuffled, _ = layer(positions(x[:, order]), None)
print("with sinusoidal positions, the same:", torch.allclose(with_pos_shuffled, with_pos[:, order], atol=1e-5))
assert not torch.allclose(with_pos_shuffled, with_pos[:, order], atol=1e-5)

# %% [markdown]
# The sinusoidal table (`sinusoids`): each pair of dimensions turns at its own frequency, so a
# shift by k positions is the same linear map wherever it starts.

# %%
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.imshow(sinusoids(64, d_model).T, aspect="auto", cmap="RdBu")
ax.set_xlabel("position")
ax.set_ylabel("dimension")
plt.show()

# %% [markdown]
# ## Pre- and post-norm
#
# Around each sublayer `f` is a residual connection and a layer norm (`Residual`). The original
# Transformer normalises after the sum (**post-norm**, `LN(x + f(x))`); most recent models
# normalise the sublayer's input (**pre-norm**, `x + f(LN(x))`), which leaves the residual stream
# itself unnormalised and trains stably without a long warm-up. On Multi30k with the shipped
# warm-up, post-norm was 3.1 BLEU behind after 400 updates ([Ablations](../results/ablations.md)).
# The difference shows in the scale of what leaves a layer:

# %%
for norm in ("pre", "post"):
    layer_n = EncoderLayer(TransformerConfig(d_model=d_model, heads=heads, ff_size=64, dropout=0.0,
                                             norm=norm)).eval()
    with torch.no_grad():
        y, _ = layer_n(3 * x, None)
    print(f"{norm}-norm: input std {(3 * x).std():.2f} -> output std {y.std():.2f}")
