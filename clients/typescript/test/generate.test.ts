/**
 * `npm run generate` (scripts/generate.mjs): the same types from a file, a URL (a running
 * backend) or standard input; an app's own endpoint in the document is typed too; `--check`
 * fails when the checked-in file differs from what the document generates.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { ROOT } from "./backend.js";

const PACKAGE = path.join(ROOT, "clients/typescript");
const SCRIPT = path.join(PACKAGE, "scripts/generate.mjs");
const DOCUMENT = path.join(ROOT, "docs/openapi.yaml");
const SCHEMA = path.join(PACKAGE, "src/schema.ts");
const dir = mkdtempSync(path.join(tmpdir(), "generate-test-"));

after(() => rmSync(dir, { recursive: true, force: true }));

function generate(args: string[], stdin?: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.INIT_CWD;
    const child = spawn(process.execPath, [SCRIPT, ...args], { cwd: dir, env });
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (out += b.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out }));
    child.stdin.end(stdin ?? "");
  });
}

test("--check passes for the checked-in types and fails, saying what to do, when they differ", async () => {
  const copy = path.join(dir, "schema-copy.ts");
  copyFileSync(SCHEMA, copy);
  const same = await generate(["--check", "--out", copy, DOCUMENT]);
  assert.equal(same.code, 0, same.out);
  appendFileSync(copy, "// edited by hand\n");
  const drifted = await generate(["--check", "--out", copy, DOCUMENT]);
  assert.equal(drifted.code, 1);
  assert.match(drifted.out, /differs from what .* generates: run `npm run generate`/);
});

test("a URL (a running backend) and standard input give the same types as the file", async () => {
  const server = createServer((_req, res) => {
    res.writeHead(200, { "Content-Type": "application/yaml" });
    res.end(readFileSync(DOCUMENT));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  try {
    const fromUrl = path.join(dir, "from-url.ts");
    const run = await generate(["--out", fromUrl, `http://127.0.0.1:${port}/openapi.yaml`]);
    assert.equal(run.code, 0, run.out);
    assert.equal(readFileSync(fromUrl, "utf8"), readFileSync(SCHEMA, "utf8"));
  } finally {
    server.close();
  }
  const fromStdin = path.join(dir, "from-stdin.ts");
  const run = await generate(["--out", fromStdin, "-"], readFileSync(DOCUMENT, "utf8"));
  assert.equal(run.code, 0, run.out);
  assert.equal(readFileSync(fromStdin, "utf8"), readFileSync(SCHEMA, "utf8"));
});

test("an app's own endpoint in the document is typed, with its body and answer", async () => {
  const doc = path.join(dir, "app.yaml");
  const extra = `
  /api/report:
    post:
      operationId: appReport
      requestBody:
        required: true
        content:
          application/json:
            schema:
              allOf:
                - {$ref: "#/components/schemas/SignedBody"}
                - type: object
                  required: [month]
                  properties:
                    month: {type: string}
      responses:
        "200":
          description: The report
          content:
            application/json:
              schema:
                type: object
                required: [total]
                properties:
                  total: {type: integer}
`;
  const text = readFileSync(DOCUMENT, "utf8").replace("\npaths:\n", `\npaths:${extra}\n`);
  assert.notEqual(text, readFileSync(DOCUMENT, "utf8"));
  writeFileSync(doc, text);
  const out = path.join(dir, "app-schema.ts");
  const run = await generate(["--out", out, doc]);
  assert.equal(run.code, 0, run.out);
  const generated = readFileSync(out, "utf8");
  assert.match(generated, /"\/api\/report": \{/);
  assert.match(generated, /month: string;/);
  assert.match(generated, /total: number;/);
});

test("a source that cannot be read is one line and exit code 2", async () => {
  const run = await generate(["--out", path.join(dir, "x.ts"), path.join(dir, "no-such.yaml")]);
  assert.equal(run.code, 2);
  assert.match(run.out, /^generate: .*no-such\.yaml/);
  assert.equal(run.out.trim().split("\n").length, 1);
});
