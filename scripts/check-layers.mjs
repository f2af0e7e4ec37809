#!/usr/bin/env node
// Checks DESIGN.md's layering over src/: a module imports only its own layer or those below
// (common is below everything), and no import cycle between modules. Exit 1 with the findings.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = resolve(process.argv[2] ?? 'src');
const ORDER = [
  'common',
  'block',
  'nbd',
  'storage',
  'repository',
  'protection',
  'compute',
  'orchestration',
  'api',
  'web',
  'cli',
];
// The faces are one rank: each may import the orchestration layer and below; cli may use api's client and daemon.
const rank = (layer) =>
  layer === 'web' || layer === 'cli' ? ORDER.indexOf('api') + 1 : ORDER.indexOf(layer);

// Known, written down, to be fixed: the qemu: backup source drives QEMU's QMP (compute/) from
// protection/. Anything else fails.
const KNOWN = new Set([
  'protection/backup/qmp-pull.ts (protection) imports compute/index.ts (compute): upward',
]);

const files = [];
(function walk(d) {
  for (const n of readdirSync(d)) {
    const p = join(d, n);
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) files.push(p);
  }
})(root);

const layerOf = (f) => relative(root, f).split('/')[0];
const problems = [];
const graph = new Map();
const spec = /(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'|import\(\s*'(\.[^']+)'\s*\)/g;
for (const f of files) {
  const src = readFileSync(f, 'utf8');
  const deps = [];
  for (const m of src.matchAll(spec)) {
    const target = resolve(dirname(f), (m[1] ?? m[2]).replace(/\.js$/, '.ts'));
    if (!target.startsWith(root)) continue;
    const from = layerOf(f);
    const to = layerOf(target);
    const test = f.endsWith('.test.ts');
    if (!test && from !== to && rank(to) > rank(from))
      problems.push(`${relative(root, f)} (${from}) imports ${relative(root, target)} (${to}): upward`);
    if (!test) deps.push(target);
  }
  graph.set(f, deps);
}
// Cycles (type-only imports count too: they still tie the modules together).
const state = new Map();
const stack = [];
function visit(f) {
  state.set(f, 1);
  stack.push(f);
  for (const d of graph.get(f) ?? []) {
    if (!graph.has(d)) continue;
    if (state.get(d) === 1) {
      const cyc = stack
        .slice(stack.indexOf(d))
        .concat(d)
        .map((x) => relative(root, x));
      problems.push(`cycle: ${cyc.join(' -> ')}`);
    } else if (!state.has(d)) visit(d);
  }
  stack.pop();
  state.set(f, 2);
}
for (const f of graph.keys()) if (!state.has(f)) visit(f);
const fresh = problems.filter((p) => !KNOWN.has(p));
for (const p of problems) console.log(KNOWN.has(p) ? `known: ${p}` : p);
console.log(
  `${files.length} files, ${fresh.length} problem(s)${problems.length > fresh.length ? `, ${problems.length - fresh.length} known` : ''}`,
);
process.exit(fresh.length ? 1 : 0);
