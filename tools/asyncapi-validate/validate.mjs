// Validates AsyncAPI documents with the official parser (@asyncapi/parser), as
// `asyncapi validate` does: the JSON schema of the spec and its bindings, then the parser's
// ruleset. Usage: node validate.mjs FILE... ; prints one JSON line per file, exits 1 when a
// document has an error or a warning.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information',
  [DiagnosticSeverity.Hint]: 'hint',
};
const FAILING = new Set(['error', 'warning']);

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node validate.mjs FILE...');
  process.exit(2);
}

const parser = new Parser();
let failed = false;
for (const file of files) {
  const source = await readFile(file, 'utf8');
  const { document, diagnostics } = await parser.parse(source, { source: file });
  const found = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.join('/'),
  }));
  const valid = document !== undefined && !found.some((d) => FAILING.has(d.severity));
  failed ||= !valid;
  console.log(JSON.stringify({
    file,
    valid,
    asyncapi: document?.version() ?? null,
    channels: document ? document.channels().length : 0,
    operations: document ? document.operations().length : 0,
    messages: document ? document.messages().length : 0,
    diagnostics: found,
  }));
}
process.exit(failed ? 1 : 0);
