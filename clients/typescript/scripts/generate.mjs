#!/usr/bin/env node
// Generate the client's types (src/schema.ts) from the backend's OpenAPI document, with
// openapi-typescript.
//
//   npm run generate                          from ../../docs/openapi.yaml (the default)
//   npm run generate -- path/to/openapi.yaml  from a file (YAML or JSON)
//   npm run generate -- http://127.0.0.1:8000/openapi.json   from a running backend (a URL)
//   python run.py openapi | npm run generate -- -            from standard input
//   npm run generate -- --check [source]      write nothing: exit 1 when src/schema.ts is not
//                                             what the source generates (CI: the client can
//                                             never drift from the server)
//   npm run generate -- --out FILE [source]   write somewhere else than src/schema.ts
//
// A path is relative to the directory npm was started from (INIT_CWD), as a developer types it.
import { readFile, writeFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString, COMMENT_HEADER } from "openapi-typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const packageDir = path.resolve(here, "..");
const DEFAULT_SOURCE = path.resolve(packageDir, "../../docs/openapi.yaml");
const SCHEMA = path.resolve(packageDir, "src/schema.ts");

/** The header every generated file starts with: where it came from, without a machine path. */
function header() {
  return COMMENT_HEADER.replace(
    " */",
    " * Regenerate with `npm run generate` (scripts/generate.mjs); `npm run check` fails\n" +
      " * when this file differs from what the backend's OpenAPI document generates.\n */",
  );
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

/** The input openapi-typescript takes: a URL, a file URL, or the document's text. */
async function input(source) {
  if (source === "-") return readStdin();
  if (/^https?:\/\//.test(source)) {
    // fetched here, so that an unreachable backend says so in one line
    const resp = await fetch(source);
    if (!resp.ok) throw new Error(`${source} answered ${resp.status}`);
    return resp.text();
  }
  const file = path.resolve(process.env.INIT_CWD ?? process.cwd(), source);
  return readFile(file, "utf8");
}

/** The TypeScript text the document at `source` generates (deterministic). */
export async function generate(source = DEFAULT_SOURCE) {
  const ast = await openapiTS(await input(source), { silent: true });
  return header() + astToString(ast);
}

async function main(argv) {
  let check = false;
  let out = SCHEMA;
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--check") check = true;
    else if (argv[i] === "--out") out = path.resolve(process.env.INIT_CWD ?? process.cwd(), argv[++i]);
    else rest.push(argv[i]);
  }
  if (rest.length > 1) throw new Error("one source at most: a file, a URL or -");
  const source = rest[0] ?? DEFAULT_SOURCE;
  const text = await generate(source);
  if (!check) {
    await writeFile(out, text);
    console.log(`wrote ${path.relative(process.cwd(), out)} from ${source}`);
    return 0;
  }
  // Regenerate into a temporary file and compare, byte for byte, with the checked-in one.
  const dir = await mkdtemp(path.join(tmpdir(), "schema-check-"));
  try {
    const fresh = path.join(dir, "schema.ts");
    await writeFile(fresh, text);
    const [a, b] = await Promise.all([readFile(fresh, "utf8"), readFile(out, "utf8").catch(() => "")]);
    if (a === b) {
      console.log(`${path.relative(process.cwd(), out)} is up to date with ${source}`);
      return 0;
    }
    console.error(
      `${path.relative(process.cwd(), out)} differs from what ${source} generates: ` +
        "run `npm run generate` and commit the result",
    );
    return 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(`generate: ${err.message}`);
      process.exit(2);
    },
  );
}
