// A real Prometheus (Debian's package) scrapes a real site daemon's /metrics with the API token
// from a file, and a PromQL query gives back the number of backup jobs the daemon ran. The
// target's health (Prometheus parsed every line of the exposition) is checked too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, start, waitForListen, type Running } from '../support/proc.js';
import { site } from '../support/site.js';
import { tempDir } from '../support/tmp.js';

const PROMETHEUS = '/usr/bin/prometheus';
const BACKUPS = 3;

interface Vector {
  status: string;
  data: { result: { metric: Record<string, string>; value: [number, string] }[] };
}

/** Prometheus on a free port, scraping `target` every second with the token in `tokenFile`. */
async function prometheus(
  t: { after: (fn: () => unknown) => void },
  target: string,
  tokenFile: string,
): Promise<{ url: string; proc: Running }> {
  const tmp = tempDir('haven-prometheus-');
  const port = await freePort();
  const config = join(tmp.path, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      'scrape_configs:',
      '  - job_name: haven',
      '    authorization:',
      '      type: Bearer',
      `      credentials_file: ${tokenFile}`,
      '    static_configs:',
      `      - targets: ['${target}']`,
      '',
    ].join('\n'),
  );
  const proc = start(PROMETHEUS, [
    `--config.file=${config}`,
    `--storage.tsdb.path=${join(tmp.path, 'tsdb')}`,
    `--web.listen-address=127.0.0.1:${port}`,
  ]);
  // Registered before anything can fail, so that it is stopped (by its pid) whatever happens.
  t.after(async () => {
    await proc.stop();
    tmp.cleanup();
  });
  await waitForListen({ port }, 30_000, proc);
  const url = `http://127.0.0.1:${port}`;
  // It listens before its storage is open, answering 503 until then.
  const deadline = Date.now() + 30_000;
  while ((await fetch(`${url}/-/ready`)).status !== 200) {
    if (Date.now() > deadline || proc.child.exitCode !== null)
      assert.fail(`Prometheus never became ready:\n${proc.output()}`);
    await sleep(100);
  }
  return { url, proc };
}

async function getJson<T>(url: string): Promise<T> {
  const r = await fetch(url);
  assert.equal(r.status, 200, `${url}: ${r.status} ${await r.clone().text()}`);
  return (await r.json()) as T;
}

test('a real Prometheus scrapes /metrics with the API token; a query returns the backups run', async (t) => {
  assert.ok(existsSync(PROMETHEUS), `${PROMETHEUS} (Debian package prometheus) is installed`);
  const s = await site(t);
  const info = await s.info();
  const repo = join(s.dir, '..', 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('volume', 'create', 'v', '--size', '8M');
  for (let i = 0; i < BACKUPS; i++) await s.haven('backup', 'volume:v', '--repo', repo);

  // Without the token: 401, as for any API route.
  const bare = await fetch(`${info.url}/metrics`);
  assert.equal(bare.status, 401);

  const tokenFile = join(s.dir, '..', 'prometheus-token');
  writeFileSync(tokenFile, info.token + '\n', { mode: 0o600 });
  const prom = await prometheus(t, new URL(info.url).host, tokenFile);

  const query = 'haven_jobs_total{kind="volume.backup",outcome="succeeded"}';
  const deadline = Date.now() + 60_000;
  let last: Vector | undefined;
  for (;;) {
    last = await getJson<Vector>(`${prom.url}/api/v1/query?query=${encodeURIComponent(query)}`);
    if (last.data.result[0]?.value[1] === String(BACKUPS)) break;
    if (Date.now() > deadline || prom.proc.child.exitCode !== null)
      assert.fail(`${query} never returned ${BACKUPS}: ${JSON.stringify(last)}\n${prom.proc.output()}`);
    await sleep(250);
  }
  assert.equal(last.status, 'success');

  // Prometheus took every line: the target is up and no scrape failed.
  const targets = await getJson<{ data: { activeTargets: { health: string; lastError: string }[] } }>(
    `${prom.url}/api/v1/targets`,
  );
  assert.deepEqual(
    targets.data.activeTargets.map((x) => [x.health, x.lastError]),
    [['up', '']],
  );
  // And a gauge read at scrape time came through: the repository's snapshots.
  const snaps = await getJson<Vector>(
    `${prom.url}/api/v1/query?query=${encodeURIComponent('haven_repository_snapshots')}`,
  );
  assert.equal(snaps.data.result[0]?.value[1], String(BACKUPS));
});
