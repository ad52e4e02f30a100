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
# Most of it runs on freshly initialised layers: the mechanics (shapes, masks, what positions
# change) hold for any weights. What the heads of a *trained* model look at needs training: the
# section on heads trains a tiny Transformer on the numbers corpus briefly (under a minute on a
# CPU; seconds with `NMTKIT_TUTORIAL_BUDGET=small`, the site build of `make test`).

# %%
import contextlib
import io
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from nmtkit.checkpoint import load_checkpoint
from nmtkit.config import TransformerConfig, config_from_dict
from nmtkit.democorpus import make_demo_corpus
from nmtkit.embeddings import PositionalEncoding, sinusoids
from nmtkit.training import train
from nmtkit.transformer_layers import EncoderLayer, attention_by_hand
from nmtkit.translator import Translator
from nmtkit.vocabulary import EOS_ID, PAD_ID

SMALL = os.environ.get("NMTKIT_TUTORIAL_BUDGET") == "small"
torch.set_num_threads(1)  # tiny models: one thread is as fast, and leaves the other cores alone
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
# (`merge_heads`, then an output projection). Each head can look at something different.
#
# To see what they learn to look at, we train a tiny Transformer (2 encoder and 2 decoder layers,
# 4 heads, `d_model` 64) to translate English number words into Korean ones (the numbers corpus,
# `nmtkit/democorpus.py`), written to a temporary folder, and draw the encoder's self-attention
# on a number it never saw. (English on the source side, so that the picture's labels are
# English words.)

# %%
scratch = tempfile.TemporaryDirectory(prefix="nmtkit-tutorial-4-")  # removed when the run ends
workdir = Path(scratch.name)
files = make_demo_corpus(workdir / "corpus", seed=3, n_train=3000, n_valid=50, n_test=10)
config = config_from_dict({
    "data": {"train_src": str(files["train"][0]), "train_tgt": str(files["train"][1]),  # en -> ko
             "valid_src": str(files["valid"][0]), "valid_tgt": str(files["valid"][1]),
             "out_dir": str(workdir / "bin"), "max_len": 40},
    "vocab": {"type": "bpe", "size": 200, "joint": False, "byte_fallback": False},
    "model": {"type": "transformer", "d_model": 64, "heads": heads, "ff_size": 256,
              "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0},
    "training": {"out_dir": str(workdir / "run"), "seed": 1, "num_threads": 1, "max_tokens": 2000,
                 "max_steps": 100 if SMALL else 300, "max_epochs": 100, "lr": 0.004,
                 "schedule": "noam", "warmup_steps": 80, "valid_bleu": False, "valid_every": 10000},
})
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    run = train(config)
trained = load_checkpoint(run / "last")
model = trained.model.eval()

test_en = files["test"][0].read_text(encoding="utf-8").splitlines()
test_ko = files["test"][1].read_text(encoding="utf-8").splitlines()
n = max(range(len(test_en)), key=lambda j: len(test_en[j].split()))  # the longest test number
number = test_en[n]
print(f"{number} -> {Translator(trained).translate([number])[0]} (reference: {test_ko[n]})")
src = torch.tensor([trained.src_tokenizer.encode(number) + [EOS_ID]])
pieces = trained.src_tokenizer.pieces(src[0, :-1].tolist()) + ["</s>"]
encoder = model.encoder  # nmtkit/transformer.py: TransformerEncoder
with torch.no_grad():  # the encoder's forward, step by step, keeping each layer's weights
    h = encoder.positions(encoder.embedding(src) * encoder.scale)  # (1, src_len, d_model)
    key_mask = (src != PAD_ID)[:, None, None, :]
    trained_weights = []
    for enc_layer in encoder.layers:
        h, w = enc_layer(h, key_mask, need_weights=True)  # w: (1, heads, src_len, src_len)
        trained_weights.append(w[0])
print("the encoder's input pieces:", pieces)
fig, axes = plt.subplots(len(trained_weights), heads, figsize=(3 * heads, 3.2 * len(trained_weights)))
for n, w in enumerate(trained_weights):
    for hd in range(heads):
        ax = axes[n][hd]
        ax.imshow(w[hd], cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(pieces)), [p.replace("\u2581", "_") for p in pieces], rotation=90, fontsize=7)
        ax.set_yticks(range(len(pieces)), [p.replace("\u2581", "_") for p in pieces], fontsize=7)
        ax.set_title(f"layer {n}, head {hd}", fontsize=9)
plt.tight_layout()
plt.show()
spread = torch.stack([(a - b).abs().sum(-1).mean() for w in trained_weights
                      for a in w for b in w])  # how far apart two heads' rows are (0 to 2)
print(f"the heads differ: mean distance between two heads' rows up to {spread.max():.2f} (of 2)")
assert spread.max() > 0.2, "trained heads look at different things"

# %% [markdown]
# Reading the picture: a row is a query position, a column a key, and each row sums to 1. Look
# for a head whose weight lies just left of the diagonal (each piece attends to the one before
# it: `hundred` to the digit it multiplies), and for heads that gather on a few pieces, such as
# the digits around `thousand` (which decide how Korean, grouping by ten-thousands, splits the
# number). Which head does what changes with the seed and the budget, and a model trained for
# seconds has less sharp heads than one trained for a minute; that the heads differ does not.
# `nmtkit plot-attention` and the page draw the decoder's attention over the source
# (cross-attention) the same way.

# %% [markdown]
# ## Positions: what attention cannot see on its own
#
# Attention compares every position with every other, without regard to where they stand.
# Without positional encodings an encoder layer is *permutation-equivariant*: shuffle the words
# and its outputs are shuffled the same way, nothing else changes. "the cat sat on the mat" and
# "the mat sat on the cat" look the same to it. This is the no-positions ablation of the seed
# note (`model.positional: none`); on Multi30k it cost the Transformer 5 BLEU
# ([Ablations](../results/ablations.html)).

# %%
cfg = TransformerConfig(d_model=d_model, heads=heads, ff_size=64, dropout=0.0)
layer = EncoderLayer(cfg).eval()  # an untrained layer: what follows holds for any weights
order = torch.tensor([0, 5, 2, 3, 4, 1])  # swap "cat" and "mat"
with torch.no_grad():
    out, _ = layer(x, None)
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
# warm-up, post-norm was 3.1 BLEU behind after 400 updates ([Ablations](../results/ablations.html)).
# The difference shows in the scale of what leaves a layer:

# %%
for norm in ("pre", "post"):
    layer_n = EncoderLayer(TransformerConfig(d_model=d_model, heads=heads, ff_size=64, dropout=0.0,
                                             norm=norm)).eval()
    with torch.no_grad():
        y, _ = layer_n(3 * x, None)
    print(f"{norm}-norm: input std {(3 * x).std():.2f} -> output std {y.std():.2f}")
