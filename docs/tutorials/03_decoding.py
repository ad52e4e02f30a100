# %% [markdown]
# # 3. Decoding (search): greedy, beam search, sampling, steering
#
# A trained model gives, at each step, a probability for every next token. *Decoding* (search)
# turns that into a sentence. The model scores a whole translation as the sum of the
# log-probabilities of its tokens and of the final `</s>` (the end of the sentence): logarithms,
# so that the product of the probabilities becomes a sum; a score is at most 0, and closer to 0
# is more probable (-0.69 is a probability of 1/2). We would like the translation with the
# highest score, but there are far too many to try them all. The ways of searching, and where
# they live in nmtkit:
#
# | idea | where |
# |---|---|
# | greedy search: the most probable token at each step | `nmtkit/search.py`: `greedy_search` |
# | beam search: the k most probable prefixes at each step, n-best lists | `beam_search`, `Hypothesis.nbest` |
# | the length penalty | `length_penalty` (GNMT's), `beam_search(length_penalty_alpha=...)` |
# | sampling: a random token at each step (temperature, top-k, top-p) | `sample` |
# | a forced prefix, the next words' alternatives | `Steering`; `nmtkit/translator.py`: `Translator.translate(prefix=...)`, `Translator.alternatives` |
# | the model's score of any given translation | `Translator.score` |
#
# Every search uses only the model's step interface (`encode`, `init_state`, `step`), so all of
# this works the same for the RNN, the Transformer and the decoder-only model. Here we train a
# small Transformer on the numbers corpus (Korean number words to English, `nmtkit/democorpus.py`)
# and decode with `Translator` (`nmtkit/translator.py`), the Python API.
#
# The model is trained in this tutorial, briefly: a couple of minutes on a CPU, or seconds with
# `NMTKIT_TUTORIAL_BUDGET=small` (the site build of `make test`), where it is weaker and the
# numbers below differ. A model that is not perfect is what we want here: on a perfect one every
# search finds the same translation.

# %%
import contextlib
import io
import math
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from nmtkit.config import config_from_dict
from nmtkit.democorpus import make_demo_corpus
from nmtkit.metrics import bleu_score
from nmtkit.search import length_penalty
from nmtkit.training import train
from nmtkit.translator import Translator

SMALL = os.environ.get("NMTKIT_TUTORIAL_BUDGET") == "small"
torch.set_num_threads(1)  # tiny model: one thread is as fast, and leaves the other cores alone
UPDATES = 120 if SMALL else 300
TEST = 200 if SMALL else 1000

scratch = tempfile.TemporaryDirectory(prefix="nmtkit-tutorial-3-")  # removed when the run ends
workdir = Path(scratch.name)  # everything is written here
files = make_demo_corpus(workdir / "corpus", seed=3, n_train=3000, n_valid=50, n_test=TEST)
config = config_from_dict({  # the keys of a YAML config (configs/demo-transformer.yaml), as a dict
    "data": {"train_src": str(files["train"][1]), "train_tgt": str(files["train"][0]),  # ko -> en
             "valid_src": str(files["valid"][1]), "valid_tgt": str(files["valid"][0]),
             "out_dir": str(workdir / "bin"), "max_len": 40},
    "vocab": {"type": "bpe", "size": 200, "joint": False, "byte_fallback": False},
    "model": {"type": "transformer", "d_model": 64, "heads": 4, "ff_size": 256,
              "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0},
    "training": {"out_dir": str(workdir / "run"), "seed": 1, "num_threads": 1, "max_tokens": 2000,
                 "max_steps": UPDATES, "max_epochs": 100, "lr": 0.004, "schedule": "noam",
                 "warmup_steps": 80, "valid_bleu": False, "valid_every": 10000},
})
log = io.StringIO()
with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):  # no progress bars
    run = train(config)
print(next(line for line in log.getvalue().splitlines() if line.startswith("stopped:")))

t = Translator.load(run / "last")  # the run's last checkpoint
sources = files["test"][1].read_text(encoding="utf-8").splitlines()
references = files["test"][0].read_text(encoding="utf-8").splitlines()
print(f"{len(sources)} test numbers that training never saw, e.g. {sources[0]} -> {references[0]}")

# %% [markdown]
# ## Greedy search and beam search
#
# **Greedy search** takes the most probable token at each step and never looks back (`beam=1`).
# It is fast, but a token that looks best now can lead to a poor sentence: once chosen, it stays.
#
# **Beam search** keeps the `k` most probable *prefixes* at each step (the beam; `beam=5` is
# k = 5). Each step
# extends every prefix by every token, and keeps the `k` best of all these extensions; a prefix
# that ends with `</s>` is a finished hypothesis. It still does not try every sentence, but it
# can keep a prefix that starts less probably and ends better.
#
# To compare them fairly we need the same measure for both: the model's log-probability of the
# output, which `Translator.score` computes for any given translation (the model reads the given
# translation and scores each of its tokens: no search).
# Beam search here runs without a length penalty (`length_penalty=0`, below), so it ranks by
# exactly this score.

# %%
greedy = t.translate(sources, beam=1)
beam = t.translate(sources, beam=5, length_penalty=0.0)
greedy_scores = [s.log_prob for s in t.score(sources, greedy)]
beam_scores = [s.log_prob for s in t.score(sources, beam)]
gain = [b - g for b, g in zip(beam_scores, greedy_scores, strict=True)]
better = sum(d > 1e-4 for d in gain)
worse = sum(d < -1e-4 for d in gain)
print(f"BLEU: greedy {bleu_score(greedy, references):.1f}, beam 5 {bleu_score(beam, references):.1f}")
print(f"mean model score (log-probability): greedy {sum(greedy_scores) / len(sources):.3f}, "
      f"beam 5 {sum(beam_scores) / len(sources):.3f}")
print(f"beam search found a higher-scoring translation for {better} of {len(sources)} numbers, "
      f"a lower one for {worse}, the same for the rest")
assert sum(beam_scores) >= sum(greedy_scores) - 1e-3, "beam search scores at least as well as greedy"
assert better >= 1 and worse <= better

# %% [markdown]
# Beam search is not guaranteed to beat greedy on every sentence (the greedy path can fall out of
# the beam), but on average it scores at least as well, and usually the two agree: a model that
# is sure of its next token leaves search little to do.
#
# ## A worked example
#
# The number where beam search gained the most. We follow both translations token by token: the
# model's log-probability of each token (`Score.token_scores`) added up as the sentence grows.

# %%
i = max(range(len(sources)), key=lambda j: gain[j])
print("source:   ", sources[i])
print("reference:", references[i])
for name, text, score in (("greedy", greedy[i], greedy_scores[i]), ("beam 5", beam[i], beam_scores[i])):
    print(f"{name + ':':10} {text}   (score {score:.3f}, probability {math.exp(score):.1%})")
fig, ax = plt.subplots(figsize=(7, 3.2))
for name, text in (("greedy", greedy[i]), ("beam 5", beam[i])):
    s = t.score([sources[i]], [text])[0]
    running = torch.tensor(s.token_scores).cumsum(0)
    ax.plot(range(1, len(running) + 1), running, marker="o", label=f"{name}: {text}")
    for x, (piece, y) in enumerate(zip(s.tokens, running.tolist(), strict=True), start=1):
        ax.annotate(piece.replace("\u2581", "_"), (x, y), fontsize=7, xytext=(2, 4),
                    textcoords="offset points")
ax.set_xlabel("tokens so far")
ax.set_ylabel("log-probability so far")
ax.legend(fontsize=7, loc="lower left")
plt.tight_layout()
plt.show()
assert beam_scores[i] > greedy_scores[i]

# %% [markdown]
# Where the lines part, greedy took the token with the higher probability at that step; the
# tokens after it then cost more than beam search's whole continuation. Beam search kept the
# other prefix alive long enough to see that.
#
# ## n-best lists
#
# Beam search ends with more finished hypotheses than the one it returns. `nbest=N` (at most the
# beam size) gives the N best, best first, each with its score: useful for reranking with another
# model, or for showing a user a few choices.

# %%
(details,) = t.translate([sources[i]], beam=5, nbest=5, length_penalty=0.0, return_details=True)
for rank, hyp in enumerate(details.nbest, start=1):
    print(f"{rank}. {hyp.score:8.3f}  {hyp.text}")
assert [h.score for h in details.nbest] == sorted((h.score for h in details.nbest), reverse=True)

# %% [markdown]
# ## The length penalty
#
# Every token's log-probability is negative, so a longer hypothesis always has a lower sum: plain
# beam search favours short outputs, and a wide beam finds the short ones. GNMT's length penalty
# divides the score by `lp = ((5 + |Y|) / 6) ** alpha` (`length_penalty` in `nmtkit/search.py`;
# `|Y|` counts the tokens and `</s>`): alpha 0 is no penalty, larger alpha favours longer outputs.
# nmtkit's default (`decoding.length_penalty`) is 1.0.

# %%
alphas = [0.0, 0.5, 1.0, 2.0]
fig, ax = plt.subplots(figsize=(4, 2.8))
for alpha in alphas:
    ax.plot(range(1, 31), [length_penalty(n, alpha) for n in range(1, 31)], label=f"alpha {alpha}")
ax.set_xlabel("|Y| (tokens and </s>)")
ax.set_ylabel("lp: the score is divided by it")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
lengths = []
for alpha in alphas:
    out = t.translate(sources, beam=5, length_penalty=alpha)
    lengths.append(sum(len(t.tgt_tok.encode(o)) for o in out) / len(out))
    print(f"alpha {alpha}: mean output {lengths[-1]:.2f} tokens, BLEU {bleu_score(out, references):.1f}")
reference_length = sum(len(t.tgt_tok.encode(r)) for r in references) / len(references)
print(f"the references: {reference_length:.2f} tokens")
assert lengths[-1] >= lengths[0] - 0.05, "a larger alpha does not make outputs shorter"

# %% [markdown]
# On this corpus alpha changes little: each number has one right length, and the model is sure
# where a number ends (its `</s>` is far more probable than any other token there). On real text,
# where several lengths are plausible, it matters more: see beam size and length penalty on
# Multi30k in [Ablations](../results/ablations.html).

# %% [markdown]
# ## Sampling
#
# Instead of searching for the most probable translation, **sampling** draws each token at random
# from the model's distribution (`sample=True`; `sample` in `nmtkit/search.py`). The
# **temperature** reshapes the distribution first (below 1 sharper, above 1 flatter), **top-k**
# keeps only the k most probable tokens, **top-p** (nucleus) the fewest whose probability adds up
# to p. A `seed` makes the draws repeatable. Sampling gives varied outputs (back-translation,
# data augmentation, generation), not the best one: its samples score lower than search's.

# %%
for temperature in (0.5, 1.0, 2.0):
    drawn = t.translate([sources[i]] * 6, sample=True, temperature=temperature, seed=0)
    print(f"temperature {temperature}: {len(set(drawn))} different of 6: {sorted(set(drawn))[:3]}")
samples = t.translate(sources, sample=True, temperature=1.5, seed=0)
sample_scores = [s.log_prob for s in t.score(sources, samples)]
print(f"mean model score: sampled at temperature 1.5 {sum(sample_scores) / len(sources):.3f}, "
      f"greedy {sum(greedy_scores) / len(sources):.3f}")
print("top-p 0.9:", t.translate([sources[i]], sample=True, top_p=0.9, seed=1)[0])
assert sum(sample_scores) < sum(greedy_scores)

# %% [markdown]
# ## Steering: a prefix and alternatives
#
# A translator often knows how a sentence should begin. A **prefix** forces the translation to
# start with given text (forced decoding), and search continues from its end; the forced tokens
# keep their own log-probabilities, so the score is still the model's score of the whole output.
# A prefix that does not end in a space ends with a word typed in part, which search completes.
# **Alternatives** (`Translator.alternatives`) are the k likeliest next *words* after a prefix,
# each with its probability and the best translation that continues with it: what the page
# shows when you click a word. The [steering guide](../guide/steering.html) has the details.

# %% [markdown]
# A post-editor at work: take a number beam search got wrong, type the right translation up to the
# first wrong word, leaving that word unfinished, and let the model complete the rest. Then ask
# what else could go where it went wrong.

# %%
wrong = [j for j in range(len(sources)) if beam[j] != references[j]] or [i]
j = wrong[0]
model_words, right_words = beam[j].split(), references[j].split()
k = next((n for n, (a, b) in enumerate(zip(model_words, right_words, strict=False)) if a != b),
         min(len(model_words), len(right_words) - 1))  # the first wrong (or missing) word
typed = " ".join(right_words[:k + 1])[:-1]  # up to it, its last letter not typed yet
(forced,) = t.translate([sources[j]], prefix=[typed], beam=5)
print("source:   ", sources[j])
print("reference:", references[j])
print("beam 5:   ", beam[j])
print(f"prefix {typed!r} -> {forced}")
assert forced.startswith(typed)
start = " ".join(right_words[:k]) + " " if k else ""
alternatives = t.alternatives(sources[j], prefix=start, k=3, beam=5)
for alt in alternatives:
    print(f"after {start!r}: {alt.word:14} probability {alt.probability:6.1%} -> {alt.translation}")
assert alternatives and all(a.translation.startswith(start) for a in alternatives)

# %% [markdown]
# The prefix fixes what it covers; the rest is the model's own again, and may hold its next
# mistake, which the editor would then type over the same way. The alternatives show how sure
# the model was where it went wrong, and whether the right word was among its next choices.

# %% [markdown]
# What to take away:
#
# - greedy search is one path; beam search keeps `k` and scores at least as well on average;
#   they differ where the model is unsure;
# - without a length penalty beam search prefers short outputs; `alpha` trades that off;
# - sampling draws varied, lower-scoring outputs; search looks for the best one;
# - a prefix and alternatives steer search without changing the model.
#
# The same options on the command line: `nmtkit translate --beam 5 --nbest 3`,
# `--length-penalty`, `--sample --temperature --top-k --top-p --seed`, and
# `--input-format jsonl` for prefixes ([Translating](../guide/translating.html)). Measured on
# Multi30k, beam size and length penalty are in [Ablations](../results/ablations.html).
