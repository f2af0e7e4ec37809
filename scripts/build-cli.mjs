#!/usr/bin/env node
// Bundles the compiled CLI (dist/src/cli/main.js, and the backup's chunk worker) into dist/cli/:
// a few files instead of ~280 modules, so that every `haven` command starts faster (Node 20
// resolves, reads and links each ES module on its own; it has no compile cache). The lazy
// imports stay lazy (code splitting). bin/haven runs the bundle when it is at least as new as
// the tsc output, else the modules themselves. Run after tsc by `npm run build`, make and setup.
//
// Packages stay outside the bundle when they load native code or files by path (better-sqlite3,
// zstd-napi, pino's transport workers, the AWS SDK, swagger, the test-only SMTP server).
// `import.meta.url` in a bundled file is the bundle's, so each use is rewritten to the URL of the
// module it came from (a sibling file, a package.json or the console's folder resolve as
// before) — except a `new URL('./x.js', import.meta.url)` naming another entry of this bundle
// (the chunk worker), which then starts the bundled copy.
import { build } from 'esbuild';
import { readFile, rm } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const compiled = join(root, 'dist/src');
const out = join(root, 'dist/cli');
const entries = {
  main: join(compiled, 'cli/main.js'),
  'chunk-worker': join(compiled, 'protection/backup/chunk-worker.js'),
};
const entryFiles = new Set(Object.values(entries).map((f) => basename(f)));
const siblingEntry = /new URL\((['"])\.\/([\w.-]+\.js)\1, import\.meta\.url\)/g;

const moduleUrls = {
  name: 'module-urls',
  setup(b) {
    b.onLoad({ filter: /[\\/]dist[\\/]src[\\/].*\.js$/ }, async ({ path }) => {
      let text = await readFile(path, 'utf8');
      if (text.includes('import.meta.url')) {
        const kept = [];
        text = text.replace(siblingEntry, (m, _q, file) => {
          if (!entryFiles.has(file)) return m;
          kept.push(m);
          return `\0KEPT${kept.length - 1}\0`;
        });
        const own = JSON.stringify(relative(out, path).split('\\').join('/'));
        text = text.replaceAll('import.meta.url', `new URL(${own}, import.meta.url).href`);
        text = text.replace(/\0KEPT(\d+)\0/g, (_m, i) => kept[Number(i)]);
      }
      return { contents: text, loader: 'js', resolveDir: dirname(path) };
    });
  },
};

await rm(out, { recursive: true, force: true });
await build({
  entryPoints: entries,
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  sourcemap: 'linked',
  // Bundled CommonJS packages call require(); an ES module has none of its own.
  banner: {
    js: "import { createRequire as havenRequire } from 'node:module'; const require = havenRequire(import.meta.url);",
  },
  external: [
    'better-sqlite3',
    'zstd-napi',
    'zstd-napi/*',
    'pino',
    '@aws-sdk/*',
    '@fastify/swagger',
    '@apidevtools/*',
    'smtp-server',
    'playwright-core',
  ],
  plugins: [moduleUrls],
  logLevel: 'warning',
});
