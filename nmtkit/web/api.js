// The server's API, as the page uses it: every call returns the JSON the endpoint answers, or
// throws an Error whose message is the server's own explanation.

async function call(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    const detail = Array.isArray(data.detail)
      ? data.detail.map((d) => `${d.field}: ${d.message}`).join("; ")
      : data.detail;
    throw new Error(`${response.status}: ${detail}`);
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
