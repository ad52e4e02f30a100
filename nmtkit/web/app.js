// The page: translate sentences, show each translation with its attention and n-best list, and
// let a person click a word, pick another, and see the rest of the translation follow.

import * as api from "./api.js";
import { drawHeatmap, weightsOf } from "./heatmap.js";

const form = document.getElementById("translate-form");
const sourceBox = document.getElementById("source");
const beamBox = document.getElementById("beam");
const nbestBox = document.getElementById("nbest");
const status = document.getElementById("status");
const results = document.getElementById("results");
const template = document.getElementById("sentence-template");
const glossaryBox = document.getElementById("glossary");
let model = { attention: { layers: 1, heads: 1 }, max_input_tokens: null };
const view = { layer: null, head: "mean" };  // the heatmap's layer and head, kept across translations

const say = (message, error = false) => {
  status.textContent = message;
  status.classList.toggle("error", error);
};

// the options, checked here so that a person sees at once what is wrong
function options() {
  const beam = Number(beamBox.value);
  const nbest = Number(nbestBox.value);
  const wrong = (box, message) => {
    box.setCustomValidity(message);
    box.reportValidity();
    box.addEventListener("input", () => box.setCustomValidity(""), { once: true });
    throw new Error(message);
  };
  if (!Number.isInteger(beam) || beam < 1 || beam > Number(beamBox.max)) {
    wrong(beamBox, `The beam must be a whole number from 1 to ${beamBox.max}.`);
  }
  if (!Number.isInteger(nbest) || nbest < 1 || nbest > Math.min(beam, Number(nbestBox.max))) {
    wrong(nbestBox, `n best must be a whole number from 1 to ${Math.min(beam, Number(nbestBox.max))} `
      + "(at most the beam).");
  }
  return { beam, nbest };
}

// Enter translates, Shift+Enter is a new line
sourceBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const sentences = sourceBox.value.split("\n").map((s) => s.trim()).filter((s) => s);
  if (!sentences.length) return say("Type a sentence first.", true);
  try {
    const chosen = options();
    const constraints = sentences.map((s) => constraintsOf(s, ""));
    say("Translating…");
    const { translations } = await api.translate(sentences, { ...chosen, constraints });
    results.replaceChildren(...sentences.map((s, i) => sentenceCard(s, translations[i])));
    say(`${sentences.length} sentence${sentences.length > 1 ? "s" : ""} translated.`);
  } catch (error) {
    say(error.message, true);
  }
});

// ---- constraints: the glossary's target terms and a sentence's "must include" phrases ----

// "red ball = roter Ball" lines -> [[source, target]]; a line that is not a pair is an error
// naming it (it was dropped without a word, and its term silently not enforced)
function glossaryPairs() {
  const pairs = [];
  glossaryBox.value.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    const pair = line.split("=").map((x) => x.trim().split(/\s+/).join(" "));
    if (pair.length !== 2 || !pair[0] || !pair[1]) {
      throw new Error(`Glossary line ${i + 1}: write one pair as “source term = target term”, not “${line.trim().slice(0, 60)}”.`);
    }
    pairs.push(pair);
  });
  return pairs;
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const sameConstraint = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// the glossary's constraints on a sentence, by the rules of `--glossary` files (nmtkit/glossary.py):
// whole words, NFC; a source term given twice: one of its targets ({any}); read left to right,
// the longest term starting at a place wins ("red ball" before "ball"); one constraint per term
function glossaryConstraints(source) {
  const targets = new Map();
  for (const [term, target] of glossaryPairs()) {
    const key = term.normalize("NFC");
    if (!targets.has(key)) targets.set(key, []);
    if (!targets.get(key).includes(target)) targets.get(key).push(target);
  }
  if (!targets.size) return [];
  const terms = [...targets.keys()].sort((a, b) => b.length - a.length).map(escape).join("|");
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}_])(?:${terms})(?![\\p{L}\\p{N}_])`, "gu");
  const out = [];
  for (const match of source.normalize("NFC").trim().split(/\s+/).join(" ").matchAll(pattern)) {
    const found = targets.get(match[0]);
    const constraint = found.length === 1 ? found[0] : { any: found };
    if (!out.some((c) => sameConstraint(c, constraint))) out.push(constraint);
  }
  return out;
}

// a sentence's constraints: its "must include" phrases (commas between phrases, "|" between
// alternatives), then the glossary's
function constraintsOf(source, mustInclude) {
  const own = mustInclude.split(",").map((p) => p.trim()).filter((p) => p).map((p) => {
    const any = p.split("|").map((x) => x.trim()).filter((x) => x);
    return any.length > 1 ? { any } : any[0];
  });
  return [...own, ...glossaryConstraints(source).filter((c) => !own.some((o) => sameConstraint(o, c)))];
}

// which words of the translation spell a constraint's phrase (punctuation around words aside)
function constrainedWords(words, constraints) {
  const bare = words.map((w) => w.replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{N}]+$/gu, ""));
  const marked = new Set();
  for (const c of constraints) {
    for (const phrase of typeof c === "string" ? [c] : c.any) {
      const parts = phrase.split(/\s+/);
      for (let i = 0; i + parts.length <= words.length; i++) {
        // a word may go on after punctuation ("nine-one" spells "nine", as search counts it)
        const spells = (p, w) => bare[w] === p || (words[w].startsWith(p) && /^[^\p{L}\p{N}]/u.test(words[w].slice(p.length)));
        if (parts.every((p, j) => spells(p, i + j))) {
          parts.forEach((_, j) => marked.add(i + j));
        }
      }
    }
  }
  return marked;
}

// one sentence: its translation (clickable words), alternatives, prefix, n best, heatmap
function sentenceCard(source, translation) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".source").textContent = source;
  const prefixForm = card.querySelector(".prefix-form");
  const prefixBox = card.querySelector(".prefix");
  card.constraints = () => constraintsOf(source, card.querySelector(".must-include").value);
  prefixForm.addEventListener("submit", (event) => {
    event.preventDefault();
    retranslate(card, source, prefixBox.value);
  });
  show(card, source, translation);
  return card;
}

// focusWord: the word to give the keyboard focus to afterwards (after an alternative was picked)
async function retranslate(card, source, prefix, focusWord = null) {
  try {
    const chosen = options();
    say(`Translating from “${prefix}”…`);
    const { translations } = await api.translate([source], {
      ...chosen, prefix: [prefix], constraints: [card.constraints()] });
    show(card, source, translations[0]);
    say("Translated.");
    if (focusWord !== null) card.querySelectorAll(".translation .word")[focusWord]?.focus();
  } catch (error) {
    say(error.message, true);
  }
}

function show(card, source, translation) {
  // the translation, a button per word: a click asks for the alternatives at that position
  const line = card.querySelector(".translation");
  const words = translation.text.split(" ").filter((w) => w);
  const marked = constrainedWords(words, card.constraints());
  line.replaceChildren(...words.map((word, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = marked.has(i) ? "word constrained" : "word";
    button.textContent = word;
    button.addEventListener("click", () => offerAlternatives(card, source, words, i));
    return button;
  }));
  card.querySelector(".alternatives").hidden = true;

  const note = card.querySelector(".truncated");
  note.hidden = !translation.truncated;
  note.textContent = translation.truncated
    ? `Too long for the model: only its first ${model.max_input_tokens ?? "few"} subword tokens `
      + "were read, and the rest is not translated. Split it into shorter sentences."
    : "";

  const nbest = card.querySelector(".nbest");
  nbest.replaceChildren(...(translation.nbest.length ? translation.nbest : [translation]).map((t) => {
    const item = document.createElement("li");
    const score = document.createElement("span");
    score.className = "score muted";
    score.textContent = `score ${t.score.toFixed(3)}`;
    item.append(`${t.text} `, score);
    return item;
  }));

  drawAttention(card, translation);
}

async function offerAlternatives(card, source, words, position) {
  const prefix = words.slice(0, position).map((w) => `${w} `).join("");
  const box = card.querySelector(".alternatives");
  card.querySelector(".replaced").textContent = words[position];
  const choices = card.querySelector(".choices");
  choices.replaceChildren();
  box.hidden = false;
  // Escape closes the alternatives, and the keyboard goes back to the word
  box.onkeydown = (event) => {
    if (event.key !== "Escape") return;
    box.hidden = true;
    card.querySelectorAll(".translation .word")[position]?.focus();
  };
  say(`Alternatives for “${words[position]}”…`);
  try {
    const { beam } = options();
    const { alternatives } = await api.alternatives(source, prefix, {
      beam, constraints: card.constraints() });
    choices.replaceChildren(...alternatives.map((alt) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "choice";
      button.textContent = `${alt.word}  ${percent(alt.probability)}`;
      button.title = alt.translation;
      button.addEventListener("click", () => {
        card.querySelector(".prefix").value = alt.prefix;
        retranslate(card, source, alt.prefix, position);
      });
      item.appendChild(button);
      return item;
    }));
    say(`${alternatives.length} alternatives for “${words[position]}”.`);
    choices.querySelector("button")?.focus();
  } catch (error) {
    say(error.message, true);
  }
}

// a probability for a person: "<0.1%" rather than "0.0%"
const percent = (p) => (p < 0.001 ? "<0.1%" : `${(100 * p).toFixed(1)}%`);

function drawAttention(card, translation) {
  const box = card.querySelector(".attention");
  if (!translation.attention) {
    box.hidden = true;  // a model without attention
    return;
  }
  const { layers, heads } = model.attention;
  const layerBox = card.querySelector(".layer");
  const headBox = card.querySelector(".head");
  const choose = (select, values, chosen) => {
    select.replaceChildren(...values.map(([value, label]) => new Option(label, value, false, value === chosen)));
  };
  const layer = view.layer !== null && view.layer < layers ? view.layer : layers - 1;
  const chosenHead = view.head !== "mean" && view.head < heads ? String(view.head) : "mean";
  choose(layerBox, [...Array(layers).keys()].map((l) => [String(l), `${l}`]), String(layer));
  choose(headBox, [["mean", "mean of heads"], ...[...Array(heads).keys()].map((h) => [String(h), `${h}`])], chosenHead);
  card.querySelector(".layer-label").hidden = layers < 2;
  card.querySelector(".head-label").hidden = heads < 2;
  const table = card.querySelector(".heatmap");
  const redraw = () => {
    const head = headBox.value === "mean" ? "mean" : Number(headBox.value);
    view.layer = Number(layerBox.value);
    view.head = head;
    drawHeatmap(table, weightsOf(translation, view.layer, head),
      translation.source_tokens, [...translation.tokens, "</s>"], card.querySelector(".heatmap-reading"));
  };
  layerBox.onchange = redraw;
  headBox.onchange = redraw;
  redraw();
}

api.info().then((data) => {
  model = data;
  document.getElementById("model-info").textContent =
    `${data.model} model, ${data.parameters.toLocaleString()} parameters, update ${data.step ?? "?"}`;
  // the page opens at beam 5 (not the model's default, often 1: an n-best list of one)
  beamBox.max = data.limits.max_beam;
  beamBox.value = Math.min(5, data.limits.max_beam);
  nbestBox.max = data.limits.max_nbest;
}).catch((error) => say(error.message, true));
