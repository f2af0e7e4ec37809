// GET /metrics in-process: buildApi on a real Site, a real backup job and a real NBD client
// reading a volume over the site's unix socket. The exposition is checked line by line against
// the Prometheus text format (and each metric docs/metrics.md names appears in it); the token
// is required; two sites in one process keep apart registries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Repository, Site } from '../orchestration/index.js';
import { connectNbd } from '../nbd/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { buildApi } from './server.js';

const MiB = 1024 * 1024;
const DOC = new URL('../../../docs/metrics.md', import.meta.url);

async function openSite(t: { after: (fn: () => unknown) => void }, name: string) {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name, nbdListen: 'none' });
  const app = await buildApi(site, { openapi: false });
  t.after(async () => {
    await app.close();
    await site.close();
    tmp.cleanup();
  });
  return { site, app, tmp, auth: { authorization: `Bearer ${site.apiToken()}` } };
}

/** The metric names docs/metrics.md documents (the first column of its tables). */
function documented(): string[] {
  const names = [...readFileSync(DOC, 'utf8').matchAll(/^\| `([a-z_:]+)`/gm)].map((m) => m[1]!);
  assert.ok(names.length > 10, 'docs/metrics.md lists the metrics');
  return names;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(?:${LABEL})(?:,${LABEL})*\\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$`);
const SUFFIXES: Record<string, string[]> = {
  histogram: ['_bucket', '_sum', '_count'],
  summary: ['', '_sum', '_count'],
};

/**
 * The Prometheus text format (exposition_formats.md), strictly: HELP then TYPE once per metric,
 * samples only of a declared metric (with its type's suffixes), labels quoted and escaped,
 * values numbers. Returns each metric's type and its samples.
 */
function parseExposition(text: string): Map<string, { type: string; samples: string[] }> {
  const metrics = new Map<string, { type: string; samples: string[] }>();
  let help: string | undefined;
  let current: string | undefined;
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  for (const line of text.slice(0, -1).split('\n')) {
    if (line === '') continue;
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^# HELP (${NAME}) (.*)$`).exec(line))) {
      assert.ok(!metrics.has(m[1]!), `metric ${m[1]} appears once`);
      help = m[1];
    } else if ((m = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line))) {
      assert.equal(m[1], help, `TYPE ${m[1]} follows its HELP`);
      metrics.set(m[1]!, { type: m[2]!, samples: [] });
      current = m[1];
    } else if ((m = SAMPLE.exec(line))) {
      assert.ok(current, `sample before any TYPE: ${line}`);
      const { type, samples } = metrics.get(current)!;
      const ok = (SUFFIXES[type] ?? ['']).some((s) => m![1] === current + s);
      assert.ok(ok, `sample ${m[1]} belongs to ${current} (${type})`);
      assert.ok(m[2] === 'NaN' || m[2]!.endsWith('Inf') || Number.isFinite(Number(m[2])), line);
      samples.push(line);
    } else assert.fail(`not a line of the Prometheus text format: ${JSON.stringify(line)}`);
  }
  return metrics;
}

function value(samples: string[], prefix: string): number | undefined {
  const line = samples.find((s) => s.startsWith(prefix + ' '));
  return line === undefined ? undefined : Number(line.slice(prefix.length + 1));
}

test('/metrics: 401 without the API token, the text format with it, every documented metric present', async (t) => {
  const { site, app, tmp, auth } = await openSite(t, 'm1');
  for (const headers of [{}, { authorization: 'Bearer wrong' }]) {
    const r = await app.inject({ method: 'GET', url: '/metrics', headers });
    assert.equal(r.statusCode, 401);
    assert.equal(r.json().error.code, 'UNAUTHENTICATED');
  }

  // Two backups into one repository (the second finds every chunk there), and NBD reads.
  await site.volumes.createVolume('a', 'v', 4 * MiB);
  const client = await connectNbd(`nbd+unix:///v?socket=${site.nbdSocket}`);
  await client.write(Buffer.alloc(MiB, 7), 0);
  await client.flush();
  const repoPath = join(tmp.path, 'repo');
  await Repository.init(repoPath);
  for (let i = 0; i < 2; i++) {
    const job = await site.jobs.wait(site.backups.backup('a', { volume: 'v' }, { repo: repoPath }).id);
    assert.equal(job.state, 'succeeded', job.error);
  }
  const failed = await site.jobs.wait(
    site.backups.backup('a', { volume: 'v' }, { repo: join(tmp.path, 'none') }).id,
  );
  assert.equal(failed.state, 'failed');
  const buf = Buffer.alloc(4096);
  for (let i = 0; i < 10; i++) await client.read(buf, i * 4096);

  const r = await app.inject({ method: 'GET', url: '/metrics', headers: auth });
  assert.equal(r.statusCode, 200);
  assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  const metrics = parseExposition(r.body);
  for (const name of documented()) assert.ok(metrics.has(name), `${name} (docs/metrics.md) is exposed`);
  for (const name of metrics.keys())
    if (name.startsWith('haven_')) assert.ok(documented().includes(name), `${name} is documented`);

  const s = (name: string) => metrics.get(name)!.samples;
  assert.equal(value(s('haven_jobs_total'), 'haven_jobs_total{kind="volume.backup",outcome="succeeded"}'), 2);
  assert.equal(value(s('haven_jobs_total'), 'haven_jobs_total{kind="volume.backup",outcome="failed"}'), 1);
  assert.equal(
    value(
      s('haven_job_duration_seconds'),
      'haven_job_duration_seconds_count{kind="volume.backup",outcome="succeeded"}',
    ),
    2,
  );
  // Full, then incremental: both read through the san transport in-process.
  assert.ok(
    value(s('haven_backup_read_bytes_total'), 'haven_backup_read_bytes_total{transport="san"}')! >= MiB,
  );
  assert.ok(
    value(s('haven_backup_written_bytes_total'), 'haven_backup_written_bytes_total{transport="san"}')! > 0,
  );
  const repo = `{repository="${repoPath}"}`;
  const stored = value(s('haven_repository_stored_bytes'), `haven_repository_stored_bytes${repo}`)!;
  assert.ok(stored > 0 && stored < MiB, `1 MiB of 7s compresses: ${stored}`);
  assert.equal(value(s('haven_repository_snapshots'), `haven_repository_snapshots${repo}`), 2);
  assert.equal(value(s('haven_repository_data_bytes'), `haven_repository_data_bytes${repo}`), 2 * MiB);
  const compression = value(s('haven_backup_compression_ratio'), `haven_backup_compression_ratio${repo}`);
  assert.ok(compression !== undefined && compression < 1, `compression ratio ${compression}`);
  assert.ok(value(s('haven_backup_deduplication_ratio'), `haven_backup_deduplication_ratio${repo}`)! >= 0);
  assert.ok(value(s('haven_pool_capacity_bytes'), 'haven_pool_capacity_bytes{pool="default"}')! > 0);
  assert.equal(value(s('haven_nbd_connections'), 'haven_nbd_connections{server="nbd",export="v"}'), 1);
  const reads = value(
    s('haven_nbd_request_duration_seconds'),
    'haven_nbd_request_duration_seconds_count{server="nbd",export="v",op="read"}',
  );
  assert.equal(reads, 10);
  // The failed backup opened a job.failed alert; other rules are present at 0.
  assert.equal(
    value(s('haven_alerts_firing'), 'haven_alerts_firing{rule="job.failed",severity="critical"}'),
    1,
  );
  assert.equal(
    value(s('haven_alerts_firing'), 'haven_alerts_firing{rule="pool.full",severity="warning"}'),
    0,
  );
  assert.ok(metrics.has('process_cpu_seconds_total') && metrics.has('nodejs_eventloop_lag_seconds'));
  await client.close();
});

test('two sites in one process keep their own metrics', async (t) => {
  const a = await openSite(t, 'ma');
  const b = await openSite(t, 'mb');
  await a.site.volumes.createVolume('x', 'v', MiB);
  const repoPath = join(a.tmp.path, 'repo');
  await Repository.init(repoPath);
  await a.site.jobs.wait(a.site.backups.backup('x', { volume: 'v' }, { repo: repoPath }).id);
  const jobs = async (s: typeof a) =>
    parseExposition((await s.app.inject({ method: 'GET', url: '/metrics', headers: s.auth })).body).get(
      'haven_jobs_total',
    )!.samples;
  assert.equal(value(await jobs(a), 'haven_jobs_total{kind="volume.backup",outcome="succeeded"}'), 1);
  assert.deepEqual(await jobs(b), []);
});
