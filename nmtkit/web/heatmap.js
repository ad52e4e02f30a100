// The attention heatmap: a table with a row per target token and a column per source token,
// each cell shaded by its weight. Hovering a target token (its row) lights up the source tokens
// it attends to, and hovering a source token (its column) the target tokens that attend to it.
// From the keyboard, the arrow keys move over the cells (the table takes the focus), and the
// cell's tokens and weight are read out in `reading`.

// the weights to show: one layer and head, or the mean of the layer's heads (head = "mean")
export function weightsOf(translation, layer, head) {
  if (!translation.attention_layers) return translation.attention;
  const heads = translation.attention_layers[layer];
  if (head !== "mean") return heads[head];
  return heads[0].map((row, i) =>
    row.map((_, j) => heads.reduce((sum, h) => sum + h[i][j], 0) / heads.length));
}

// a header cell for a token: a source token heads a column, a target token a row. The
// sentencepiece word-start mark "▁" is drawn quietly (a faint mark, not a black bar), and the
// label reads as the whole piece for screen readers.
function tokenHeader(token, scope, index) {
  const th = document.createElement("th");
  const start = token.startsWith("\u2581");
  if (start) {
    const mark = document.createElement("span");
    mark.className = "word-start";
    mark.textContent = "\u2581";
    mark.setAttribute("aria-hidden", "true");
    th.append(mark, token.slice(1));
    th.title = `${token.slice(1)} (starts a word)`;
  } else {
    th.textContent = token;
  }
  th.scope = scope;
  th.className = scope === "col" ? "source-token" : "target-token";
  th.dataset[scope === "col" ? "column" : "row"] = index;
  return th;
}

export function drawHeatmap(table, weights, sourceTokens, targetTokens, reading = null) {
  table.replaceChildren();
  const header = table.createTHead().insertRow();
  header.appendChild(document.createElement("th"));
  sourceTokens.forEach((token, j) => header.appendChild(tokenHeader(token, "col", j)));
  const body = table.createTBody();
  targetTokens.forEach((token, i) => {
    const row = body.insertRow();
    row.appendChild(tokenHeader(token, "row", i));
    sourceTokens.forEach((_, j) => {
      const cell = row.insertCell();
      const w = weights[i][j];
      cell.className = "cell";
      cell.dataset.row = i;
      cell.dataset.column = j;
      cell.title = `${token} → ${sourceTokens[j]}: ${w.toFixed(3)}`;
      cell.style.backgroundColor = `rgba(31, 92, 168, ${w.toFixed(3)})`;
    });
  });

  // hover: light up the other side in proportion to the weights
  const light = (cells, strengths) => cells.forEach((c, k) => {
    c.classList.add("lit");
    c.style.setProperty("--strength", strengths[k].toFixed(3));
  });
  const clear = () => table.querySelectorAll(".lit, .hovered, .active").forEach(
    (c) => c.classList.remove("lit", "hovered", "active"));
  const sources = [...table.querySelectorAll("th.source-token")];
  const targets = [...table.querySelectorAll("th.target-token")];
  const rowOf = (i) => {  // a target token: the source tokens it attends to
    targets[i].classList.add("hovered");
    light(sources, weights[i]);
  };
  table.onmouseover = (event) => {
    const target = event.target.closest("[data-row], [data-column]");
    if (!target) return;
    clear();
    if (target.dataset.row !== undefined) {  // a target token or a cell of its row
      rowOf(Number(target.dataset.row));
    } else {  // a source token: the target tokens that attend to it
      const j = Number(target.dataset.column);
      sources[j].classList.add("hovered");
      light(targets, weights.map((row) => row[j]));
    }
  };
  table.onmouseleave = clear;

  // the keyboard: an active cell that the arrow keys move
  let at = null;
  const cells = [...table.querySelectorAll("td.cell")];
  const activate = (i, j) => {
    at = [i, j];
    clear();
    rowOf(i);
    sources[j].classList.add("hovered");
    const cell = cells[i * sourceTokens.length + j];
    cell.classList.add("active");
    cell.scrollIntoView({ block: "nearest", inline: "nearest" });
    if (reading) reading.textContent = `${targetTokens[i]} → ${sourceTokens[j]}: ${weights[i][j].toFixed(3)}`;
  };
  const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  table.onkeydown = (event) => {
    if (event.key === "Escape") {
      clear();
      at = null;
      return;
    }
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    if (!at) return activate(0, 0);
    const [i, j] = at;
    activate(Math.min(Math.max(i + move[0], 0), targetTokens.length - 1),
      Math.min(Math.max(j + move[1], 0), sourceTokens.length - 1));
  };
  table.onfocus = () => { if (!at) activate(0, 0); };
  table.onblur = () => { clear(); at = null; };
}
