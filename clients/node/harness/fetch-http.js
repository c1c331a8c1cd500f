// The HTTP client SMSGate's TypeScript client takes from its caller, on Node's fetch, with the
// official client's own rules: 204 is null, a non-2xx throws `HTTP error <code>: <text>`, and
// JSON is parsed only when the content type says so. Shared by the smsgate-ts harnesses.
export const http = {
  async request(method, url, body, headers) {
    const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(10_000) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(url, init);
    if (response.status === 204) return null;
    const text = await response.text();
    if (!response.ok) throw new Error(`HTTP error ${response.status}: ${text}`);
    return (response.headers.get("content-type") ?? "").includes("application/json") ? JSON.parse(text) : text;
  },
  get(url, headers) { return this.request("GET", url, undefined, headers); },
  post(url, body, headers) { return this.request("POST", url, body, headers); },
  put(url, body, headers) { return this.request("PUT", url, body, headers); },
  patch(url, body, headers) { return this.request("PATCH", url, body, headers); },
  delete(url, headers) { return this.request("DELETE", url, undefined, headers); },
};
