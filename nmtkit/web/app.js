// The page: translate sentences, show each translation with its attention and n-best list, and
// let a person click a word, pick another, and see the rest of the translation follow.

import * as api from "./api.js";
import { drawHeatmap, weightsOf } from "./heatmap.js";

const form = document.getElementById("translate-form");
const sourceBox = document.getElementById("source");
const beamBox = document.getElementById("beam");
const status = document.getElementById("status");
const results = document.getElementById("results");
const template = document.getElementById("sentence-template");
const glossaryBox = document.getElementById("glossary");
let model = { attention: { layers: 1, heads: 1 } };

const say = (message, error = false) => {
  status.textContent = message;
  status.classList.toggle("error", error);
};

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
  say("Translating…");
  try {
    const constraints = sentences.map((s) => constraintsOf(s, ""));
    const { translations } = await api.translate(sentences, { beam: Number(beamBox.value), constraints });
    results.replaceChildren(...sentences.map((s, i) => sentenceCard(s, translations[i])));
    say(`${sentences.length} sentence${sentences.length > 1 ? "s" : ""} translated.`);
  } catch (error) {
    say(error.message, true);
  }
});

// ---- constraints: the glossary's target terms and a sentence's "must include" phrases ----

// "red ball = roter Ball" lines -> [[source, target]]
function glossaryPairs() {
  return glossaryBox.value.split("\n").map((line) => line.split("=").map((x) => x.trim()))
    .filter((pair) => pair.length === 2 && pair[0] && pair[1]);
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const wholeWords = (term) => new RegExp(`(?<![\\p{L}\\p{N}_])${escape(term)}(?![\\p{L}\\p{N}_])`, "u");

// a sentence's constraints: its "must include" phrases (commas between phrases, "|" between
// alternatives), then the target terms of the glossary's source terms found in it
function constraintsOf(source, mustInclude) {
  const own = mustInclude.split(",").map((p) => p.trim()).filter((p) => p).map((p) => {
    const any = p.split("|").map((x) => x.trim()).filter((x) => x);
    return any.length > 1 ? { any } : any[0];
  });
  const glossary = glossaryPairs().filter(([term]) => wholeWords(term).test(source)).map(([, target]) => target);
  return [...own, ...glossary.filter((t) => !own.includes(t))];
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

async function retranslate(card, source, prefix) {
  say(`Translating from “${prefix}”…`);
  try {
    const { translations } = await api.translate([source], {
      beam: Number(beamBox.value), prefix: [prefix], constraints: [card.constraints()] });
    show(card, source, translations[0]);
    say("Translated.");
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

  const nbest = card.querySelector(".nbest");
  nbest.replaceChildren(...(translation.nbest.length ? translation.nbest : [translation]).map((t) => {
    const item = document.createElement("li");
    item.textContent = `${t.text}  (${t.score.toFixed(3)})`;
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
  say(`Alternatives for “${words[position]}”…`);
  try {
    const { alternatives } = await api.alternatives(source, prefix, {
      beam: Number(beamBox.value), constraints: card.constraints() });
    choices.replaceChildren(...alternatives.map((alt) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "choice";
      button.textContent = `${alt.word}  ${(100 * alt.probability).toFixed(1)}%`;
      button.title = alt.translation;
      button.addEventListener("click", () => {
        card.querySelector(".prefix").value = alt.prefix;
        retranslate(card, source, alt.prefix);
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

function drawAttention(card, translation) {
  const box = card.querySelector(".attention");
  if (!translation.attention) {
    box.hidden = true;  // a model without attention
    return;
  }
  const { layers, heads } = model.attention;
  const layerBox = card.querySelector(".layer");
  const headBox = card.querySelector(".head");
  const options = (select, values, chosen) => {
    select.replaceChildren(...values.map(([value, label]) => new Option(label, value, false, value === chosen)));
  };
  options(layerBox, [...Array(layers).keys()].map((l) => [String(l), `${l}`]), String(layers - 1));
  options(headBox, [["mean", "mean of heads"], ...[...Array(heads).keys()].map((h) => [String(h), `${h}`])], "mean");
  card.querySelector(".layer-label").hidden = layers < 2;
  card.querySelector(".head-label").hidden = heads < 2;
  const table = card.querySelector(".heatmap");
  const redraw = () => {
    const head = headBox.value === "mean" ? "mean" : Number(headBox.value);
    drawHeatmap(table, weightsOf(translation, Number(layerBox.value), head),
      translation.source_tokens, [...translation.tokens, "</s>"]);
  };
  layerBox.onchange = redraw;
  headBox.onchange = redraw;
  redraw();
}

api.info().then((data) => {
  model = data;
  document.getElementById("model-info").textContent =
    `${data.model} model, ${data.parameters.toLocaleString()} parameters, update ${data.step ?? "?"}`;
  beamBox.value = data.decoding.beam;
}).catch((error) => say(error.message, true));
