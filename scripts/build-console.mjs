#!/usr/bin/env node
// Builds the web console (src/web/client/) into dist/console/: one JavaScript bundle and one
// style sheet, named by their content's hash, with gzip'd copies, and index.html naming them.
// Run by `npm run build` (and so by scripts/setup and make); nothing is fetched at run time.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src/web/client');
const out = join(root, 'dist/console');

const r = await build({
  entryPoints: [join(src, 'main.tsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  write: false,
  outdir: out,
  legalComments: 'none',
  logLevel: 'warning',
});
const js = r.outputFiles.find((f) => f.path.endsWith('.js')).contents;
const css = readFileSync(join(src, 'style.css'));
const hash = (b) => createHash('sha256').update(b).digest('hex').slice(0, 10);
const names = { js: `app-${hash(js)}.js`, css: `app-${hash(css)}.css` };

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const html = readFileSync(join(src, 'index.html'), 'utf8')
  .replace('APP_JS', names.js)
  .replace('APP_CSS', names.css);
let sent = 0;
for (const [name, body] of [
  [names.js, js],
  [names.css, css],
  ['index.html', Buffer.from(html)],
]) {
  const gz = gzipSync(body, { level: 9 });
  writeFileSync(join(out, name), body);
  writeFileSync(join(out, `${name}.gz`), gz);
  sent += gz.length;
}
console.log(
  `console: dist/console/ (${names.js} ${js.length} B, ${names.css} ${css.length} B; ${sent} B gzip'd in all)`,
);
