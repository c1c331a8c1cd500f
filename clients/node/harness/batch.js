// The harnesses' stdin/stdout loop: a JSON array of requests in, one JSON array of answers
// out (`run` maps one request to its answer). Not a JSON array: `<name>: <usage>` on stderr, exit 2.
export async function answerBatch(name, usage, run) {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const batch = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  if (!Array.isArray(batch)) {
    process.stderr.write(`${name}: ${usage}\n`);
    process.exit(2);
  }
  process.stdout.write(JSON.stringify(batch.map(run)) + "\n");
}
