# %% [markdown]
# # 5. Beyond translation: a language model and a Vision Transformer
#
# The seed note ends where the Transformer left translation: GPT (and DALL-E) keep only the
# decoder, the Vision Transformer only the encoder. nmtkit builds both from the very same layers
# as its translation Transformer, so the code can be read side by side:
#
# | model | arrangement | where |
# |---|---|---|
# | encoder-decoder (tutorial 4) | encoder layers, decoder layers with cross-attention | `nmtkit/transformer.py` |
# | decoder-only language model | one stack of masked self-attention layers, no encoder | `nmtkit/decoder_only.py`: `DecoderOnly` |
# | Vision Transformer | encoder layers over image patches, a `[CLS]` vector, a classifier | `nmtkit/vit.py`: `VisionTransformer` |
# | the layers they share | `EncoderLayer` (encoder, ViT), `DecoderLayer` (decoder, decoder-only), `MultiHeadAttention` | `nmtkit/transformer_layers.py` |
#
# Both models are trained here, briefly: a couple of minutes on a CPU, or seconds with
# `NMTKIT_TUTORIAL_BUDGET=small` (the site build of `make test`), where they are weaker and the
# numbers differ. [Beyond translation](../guide/beyond.html) has the measured results at full size.

# %%
import contextlib
import io
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from nmtkit import vit
from nmtkit.config import DecoderOnlyConfig, config_from_dict
from nmtkit.decoder_only import DecoderOnly
from nmtkit.democorpus import ONES, TENS, make_demo_corpus, number_to_english
from nmtkit.training import train
from nmtkit.translator import Translator

SMALL = os.environ.get("NMTKIT_TUTORIAL_BUDGET") == "small"
torch.set_num_threads(1)  # tiny models: one thread is as fast, and leaves the other cores alone
scratch = tempfile.TemporaryDirectory(prefix="nmtkit-tutorial-5-")  # removed when the run ends
workdir = Path(scratch.name)  # everything is written here

# %% [markdown]
# ## A decoder-only language model
#
# A language model predicts the next token from the tokens before it, and nothing else: there is
# no source to encode. `DecoderOnly` is the Transformer decoder's stack without cross-attention:
# each position attends to itself and the positions before it (the **causal mask**), and the
# output at each position predicts the next token. Trained on whole sentences, it learns what
# text of that language looks like; to *generate*, it feeds its own predictions back in, one
# token at a time, exactly as the translation decoder does, so greedy search, beam search and
# sampling (tutorial 3) run it unchanged.
#
# The mask is what lets it learn from every position of a sentence at once without seeing the
# word it must predict. With `model.prefix_lm: true` a prompt (or, in translation, the source)
# is read both ways while what follows stays causal. The masks the model builds
# (`DecoderOnly._mask`; `True`, dark: may attend):

# %%
toy = DecoderOnly(DecoderOnlyConfig(d_model=16, heads=2, ff_size=32, layers=1, prefix_lm=True), 30)
masks = {"causal (GPT)": torch.ones(8, 8, dtype=torch.bool).tril(),
         "prefix LM, a prefix of 3": toy._mask(8, torch.tensor([3]))[0, 0]}
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, (title, mask) in zip(axes, masks.items(), strict=True):
    ax.imshow(mask, cmap="Blues", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query position")
plt.tight_layout()
plt.show()
assert not masks["causal (GPT)"][0, 1] and masks["prefix LM, a prefix of 3"][0, 2]

# %% [markdown]
# We train one on the English side of the numbers corpus (`nmtkit/democorpus.py`), one language
# only: `data.train` and `data.valid` instead of a source and a target, and `model.type:
# decoder_only`. It has never been told what a number is; it sees only text like "four
# thousand seventy-one".

# %%
files = make_demo_corpus(workdir / "corpus", seed=4, n_train=2000, n_valid=50, n_test=10)
config = config_from_dict({
    "data": {"train": str(files["train"][0]), "valid": str(files["valid"][0]),
             "out_dir": str(workdir / "bin"), "max_len": 40},
    "vocab": {"type": "bpe", "size": 200, "byte_fallback": False},
    "model": {"type": "decoder_only", "d_model": 48, "heads": 4, "ff_size": 128, "layers": 2,
              "dropout": 0.0, "max_positions": 128},
    "training": {"out_dir": str(workdir / "lm"), "seed": 1, "num_threads": 1, "max_tokens": 2500,
                 "max_steps": 100 if SMALL else 400, "max_epochs": 100, "lr": 0.004,
                 "schedule": "noam", "warmup_steps": 50, "valid_every": 10000},
})
log = io.StringIO()
with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):  # no progress bars
    run = train(config)
print(next(line for line in log.getvalue().splitlines() if line.startswith("stopped:")))
print(next(line for line in log.getvalue().splitlines() if line.startswith("[valid]")))
lm = Translator.load(run / "last")

# %% [markdown]
# The validation perplexity is the exponential of the mean loss per token: the model is as
# unsure as a uniform choice among that many tokens. It cannot come near 1 however long it
# trains: the corpus's numbers are random, so which digit comes next is a guess even for a
# perfect model; what it can learn is which *words* may come next.
#
# `Translator.generate` continues prompts: greedily by default (the most probable word each
# time, so always the same continuation), or by sampling (`sample=True`, with a temperature,
# top-k or top-p; tutorial 3). An empty prompt starts a text from nothing (an empty sample is
# the model ending the text at once).

# %%
for prompt in ("three hundred", "ninety-nine thousand", "seven"):
    print(f"{prompt!r:24} -> {lm.generate([prompt], max_len=16)[0][0]}")
samples = lm.generate([""], sample=True, seed=1, num=40, max_len=16)[0]
print("samples from nothing:", *samples[:6], sep="\n  ")

# %% [markdown]
# Did it learn the *grammar* of number words, not just the words? A text is a well-formed
# number if reading it as a number and writing that number out again gives the same text
# (`number_to_english` is how the corpus writes them).

# %%
VALUES = {word: n for n, word in enumerate(ONES)} | {word: 10 * n for n, word in enumerate(TENS) if word}


def well_formed(text: str) -> bool:
    total = group = 0
    for word in text.split():
        if word == "hundred":
            group *= 100
        elif word == "thousand":
            total, group = total + group * 1000, 0
        elif "-" in word and word.split("-")[0] in VALUES and word.split("-")[1] in VALUES:
            group += VALUES[word.split("-")[0]] + VALUES[word.split("-")[1]]
        elif word in VALUES:
            group += VALUES[word]
        else:
            return False
    number = total + group
    return number <= 999_999 and number_to_english(number) == text


assert well_formed("four thousand seventy-one") and not well_formed("four seventy thousand")
share = sum(map(well_formed, samples)) / len(samples)
print(f"{share:.0%} of {len(samples)} samples are well-formed numbers")
assert share >= 0.3

# %% [markdown]
# A sample that is not well-formed usually puts right words in a wrong order (its local
# grammar is right, its long-range agreement is not), and at a small budget more of them do.
# The same `DecoderOnly` also translates: trained on `source </s> target` with the loss on the
# target only, it is GPT's way of doing what the encoder-decoder does
# ([Beyond translation](../guide/beyond.html) compares the two at equal size).
#
# ## A Vision Transformer on the digits
#
# The Vision Transformer reads an image as a sequence. It cuts the image into patches, flattens
# each and maps it to a vector with one linear layer (`to_patches`, then `patch_embedding`), puts
# a learned `[CLS]` vector in front, adds positions, and runs the Transformer encoder's layers
# (`EncoderLayer`, no mask: every patch sees every other). A classifier reads the `[CLS]` output.
# Here: scikit-learn's 1,797 handwritten digits of 8x8 pixels (`vit.digits`), in 16 patches of
# 2x2, as `nmtkit demo --model vit` trains them.

# %%
split = vit.digits()
image = split.test_images[:1]  # (1, 1, 8, 8)
patches = vit.to_patches(image, 2)  # (1, 16 patches, 4 pixels)
print("image", tuple(image.shape), "-> patches", tuple(patches.shape))
fig, axes = plt.subplots(1, 2, figsize=(5, 2.5), gridspec_kw={"width_ratios": [1, 2]})
axes[0].imshow(image[0, 0], cmap="gray_r")
axes[0].set_title("an 8x8 digit", fontsize=9)
axes[1].imshow(patches[0], cmap="gray_r", aspect="auto")
axes[1].set_title("its 16 patches, one row each", fontsize=9)
axes[1].set_xlabel("the 4 pixels of a patch")
axes[1].set_ylabel("patch")
plt.tight_layout()
plt.show()
assert torch.equal(vit.from_patches(patches, 2, 1), image)

# %%
if SMALL:  # seconds: a smaller model, a few passes
    model_cfg, epochs = vit.ViTConfig(layers=2), 5
else:  # `nmtkit demo --model vit`: 4 layers, d_model 64, 4 heads, 100 epochs
    model_cfg, epochs = vit.ViTConfig(), 100
model = vit.train_vit(model_cfg, split, vit.ViTTraining(epochs=epochs))
accuracy = vit.accuracy(model, split.test_images, split.test_labels)
baseline = vit.logistic_regression_accuracy(split)
print(f"{model_cfg.layers} layers, {sum(p.numel() for p in model.parameters()):,} weights, "
      f"{epochs} epochs: test accuracy {accuracy:.1%} on {len(split.test_labels)} images "
      f"(logistic regression on the raw pixels: {baseline:.1%}; chance: 10%)")
assert accuracy > 0.4

# %% [markdown]
# On 1,437 training images a Transformer has little to go on, and the recipe matters: the demo's
# (`vit.train_vit`: shifted images, AdamW, a warm-up, 100 epochs) reaches the logistic
# regression or passes it (the [guide's table](../guide/beyond.html) has several seeds); a few
# epochs, as at the small budget, stay well below it.
#
# Which patches did the model look at? `VisionTransformer.cls_attention` gives the weight the
# `[CLS]` position puts on each patch, heads averaged: of the last layer alone, and through all
# layers (the attention *rollout*, each layer's weights multiplied through with the residual
# path added, since a layer's output is its input plus what it attended to).

# %%
shown = split.test_images[:6]
with torch.no_grad():
    predicted = model(shown)[0].argmax(-1)
maps = {"last layer": model.cls_attention(shown, -1), "rollout": model.cls_attention(shown)}
fig, axes = plt.subplots(3, len(shown), figsize=(1.5 * len(shown), 4.6))
for j in range(len(shown)):
    axes[0][j].imshow(shown[j, 0], cmap="gray_r")
    axes[0][j].set_title(f"{int(predicted[j])} (label {int(split.test_labels[j])})", fontsize=8)
    for row, (name, attention) in enumerate(maps.items(), start=1):
        axes[row][j].imshow(attention[j], cmap="viridis", vmin=0)
        axes[row][0].set_ylabel(name, fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0][0].set_ylabel("image", fontsize=8)
plt.tight_layout()
plt.show()
# weights: each map is a share of [CLS]'s attention (the rest is on [CLS] itself)
assert all(bool((m >= 0).all() and (m.sum((1, 2)) <= 1 + 1e-5).all()) for m in maps.values())

# %% [markdown]
# Each small map is one image's 16 patches, brighter for more weight (each map on its own
# scale). In the guide's full-size run the last layer's `[CLS]` gathered on one or two patches,
# often a blank corner (the "register" behaviour of large ViTs), while the rollout spread over
# the strokes; compare this run's. Without positions (`model.positional: none`) the patches
# would be a bag: shuffle them and the output stays the same, as tutorial 4 showed for words.
#
# What to take away: one set of layers, three arrangements. Masked self-attention alone is a
# language model that generates; self-attention over patches with a `[CLS]` vector is an image
# classifier; both with cross-attention between them is the translation Transformer.
