// Copy what the package shares with the Python side into dist/ at build: the redaction rule
// data (one file, read by both) and the enqueue script (EVAL where a Redis has no functions).
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..", "..");
const dist = join(here, "..", "dist");
mkdirSync(dist, { recursive: true });
for (const path of ["redaction_rules.json", "queue/enqueue.lua"]) {
  const source = join(repo, "service", path);
  const name = path.split("/").pop();
  if (!existsSync(source)) {
    console.error(`build: ${source} is missing`);
    process.exit(1);
  }
  copyFileSync(source, join(dist, name));
}
