// The server's API, as the page uses it: every call returns the JSON the endpoint answers, or
// throws an Error whose message is written for a person (the server's own words are kept in
// `error.detail`).

// what the server says, in words a person can act on
function explain(status, data) {
  const details = Array.isArray(data?.detail) ? data.detail : [];
  const first = details[0] ?? {};
  const sentence = /^text\.(\d+)$/.exec(first.field ?? "");
  if (status === 413 && sentence) {
    const most = /at most (\d+)/.exec(first.message)?.[1];
    return `Sentence ${Number(sentence[1]) + 1} is too long: ${first.message.split(";")[0]}; `
      + `the server takes at most ${most} characters per sentence. Split it into shorter lines.`;
  }
  if (status === 413 && first.field === "text") {
    return `Too many sentences at once: ${first.message}. Translate them in smaller parts.`;
  }
  if (status === 413) return "The request is too large for the server. Translate less at once.";
  if (status === 422 && first.field === "beam") return `The beam is out of range (${first.message}).`;
  if (status === 422 && first.field === "nbest") return `Too many n-best entries (${first.message}).`;
  if (status === 422 && /^prefix/.test(first.field ?? "")) {
    return `The model cannot begin the translation that way: ${first.message}`;
  }
  if (status === 503) return "The server is busy or shutting down. Try again in a moment.";
  if (status === 504) return "The server took too long to answer. Try a shorter text or a smaller beam.";
  if (status === 500) {
    return `Something went wrong on the server (request id ${data?.request_id ?? "unknown"}); `
      + "its log has the details.";
  }
  const said = details.length ? details.map((d) => `${d.field}: ${d.message}`).join("; ") : data?.detail;
  return `The server refused the request (${status}): ${said}`;
}

async function call(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new Error("The server is not reachable. Is `nmtkit serve` still running?");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(explain(response.status, data));
    error.detail = data?.detail;
    throw error;
  }
  return data;
}

export const info = () => call("/info");

// sentences -> one translation each, with every layer's and head's attention and the n best
// constraints: per sentence, phrases that must appear ("Hund" or {any: ["Hund", "Hunde"]})
export const translate = (text, { beam, nbest = 3, prefix = null, constraints = null }) =>
  call("/translate", { text, beam, nbest: Math.min(nbest, beam), prefix, constraints, attention: true });

// the k likeliest next words after prefix, each with the translation that follows from it
export const alternatives = (source, prefix, { beam, k = 6, constraints = null }) =>
  call("/alternatives", { source, prefix, k, beam, constraints });
