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
    const { translations } = await api.translate(sentences, { beam: Number(beamBox.value) });
    results.replaceChildren(...sentences.map((s, i) => sentenceCard(s, translations[i])));
    say(`${sentences.length} sentence${sentences.length > 1 ? "s" : ""} translated.`);
  } catch (error) {
    say(error.message, true);
  }
});

// one sentence: its translation (clickable words), alternatives, prefix, n best, heatmap
function sentenceCard(source, translation) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".source").textContent = source;
  const prefixForm = card.querySelector(".prefix-form");
  const prefixBox = card.querySelector(".prefix");
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
    const { translations } = await api.translate([source], { beam: Number(beamBox.value), prefix: [prefix] });
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
  line.replaceChildren(...words.map((word, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
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
    const { alternatives } = await api.alternatives(source, prefix, { beam: Number(beamBox.value) });
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
