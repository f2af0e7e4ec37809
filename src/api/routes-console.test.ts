// The console's event stream in-process over real HTTP: a viewer's stream carries an audit event
// and a job's log lines before the job's end, and nobody gets a stream without credentials.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Site } from '../orchestration/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { API_PREFIX } from './client.js';
import { buildApi } from './server.js';

test('GET /events/stream: events, job log lines and the job, in order; 401 without credentials', async (t) => {
  const { site, url, ac } = await startApi(t);
  assert.equal((await fetch(`${url}${API_PREFIX}/events/stream`)).status, 401);
  const res = await fetch(`${url}${API_PREFIX}/events/stream`, {
    headers: { authorization: `Bearer ${site.apiToken()}` },
    signal: ac.signal,
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const seen: string[] = [];
  const done = (async () => {
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString();
      let k;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const msg = buf.slice(0, k);
        buf = buf.slice(k + 2);
        const kind = /^event: (\w+)/m.exec(msg)?.[1];
        if (!kind) continue;
        const data = JSON.parse(msg.slice(msg.indexOf('data: ') + 6)) as Record<string, unknown>;
        if (kind === 'log') seen.push(`log ${(data.line as { message: string }).message}`);
        else if (kind === 'job') seen.push(`job ${String(data.state)}`);
        else seen.push(`event ${String(data.action)}`);
        if (kind === 'job' && data.state === 'succeeded') return;
      }
    }
  })();
  const job = site.jobs.start({ kind: 'unit.work', target: 'x', actor: 'tess@test' }, async (ctx) => {
    ctx.log('first line');
    ctx.log('second line');
    return {};
  });
  await site.jobs.wait(job.id);
  await done;
  const logs = seen.filter((s) => s.startsWith('log '));
  assert.deepEqual(
    logs.filter((l) => /line$/.test(l)),
    ['log first line', 'log second line'],
    seen.join(', '),
  );
  assert.ok(seen.includes('event unit.work'), seen.join(', '));
  assert.equal(seen.at(-1), 'job succeeded', 'the job ends the sequence, after its log lines');
});

test('GET /vms/NAME/console-log/stream: the tail, then what is appended; a flood or a new file sends the last 64 KiB again', async (t) => {
  const { site, url, ac } = await startApi(t);
  const headers = { authorization: `Bearer ${site.apiToken()}` };
  assert.equal((await fetch(`${url}${API_PREFIX}/vms/nosuch/console-log/stream`, { headers })).status, 404);
  await site.volumes.createVolume('unit@test', 'disk', 1024 * 1024);
  site.vms.createVm('unit@test', 'web', {
    cpus: 1,
    memoryMiB: 64,
    disks: [{ volume: 'disk' }],
    nics: [],
    boot: { kind: 'disk' },
  });
  const path = site.compute.consoleLogPath('web');
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, 'boot line\n');
  const res = await fetch(`${url}${API_PREFIX}/vms/web/console-log/stream`, { headers, signal: ac.signal });
  assert.equal(res.status, 200);
  const got: { kind: string; text: string }[] = [];
  const reader = (async () => {
    let buf = '';
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += Buffer.from(chunk).toString();
        let k;
        while ((k = buf.indexOf('\n\n')) >= 0) {
          const msg = buf.slice(0, k);
          buf = buf.slice(k + 2);
          const kind = /^event: (\w+)/m.exec(msg)?.[1];
          if (kind) got.push({ kind, text: JSON.parse(msg.slice(msg.indexOf('data: ') + 6)) as string });
        }
      }
    } catch {
      // aborted at the end
    }
  })();
  const seen = async (what: string, ok: () => boolean) => {
    const deadline = Date.now() + 10_000;
    while (!ok()) {
      if (Date.now() > deadline) assert.fail(`${what}; got ${JSON.stringify(got).slice(0, 500)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await seen('the tail first', () => got.length >= 1);
  assert.deepEqual(got[0], { kind: 'text', text: 'boot line\n' });
  appendFileSync(path, 'second ');
  appendFileSync(path, 'line ✓\n');
  await seen('what was appended', () => got.map((g) => g.text).join('') === 'boot line\nsecond line ✓\n');
  assert.ok(got.slice(1).every((g) => g.kind === 'append'));
  // A flood: 1 MiB at once is not read whole; the last 64 KiB come as a new text.
  const n = got.length;
  appendFileSync(path, `${'x'.repeat(1024 * 1024)}\nthe end\n`);
  await seen('a new tail after the flood', () => got.length > n);
  const flood = got.at(-1)!;
  assert.equal(flood.kind, 'text');
  assert.ok(
    flood.text.length <= 64 * 1024 && flood.text.endsWith('x\nthe end\n'),
    `${flood.text.length} chars`,
  );
  // A new file (the VM started again): its start, as a new text.
  writeFileSync(path, 'rebooted\n');
  await seen('the new file', () => got.at(-1)?.text === 'rebooted\n');
  assert.equal(got.at(-1)!.kind, 'text');
  ac.abort();
  await reader;
});

/** A site and its API on a free port; `ac` aborts the test's streams. All closed when the test ends. */
async function startApi(t: TestContext) {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name: 'unit', nbdListen: 'none' });
  const app = await buildApi(site, { openapi: false });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  const ac = new AbortController();
  t.after(async () => {
    ac.abort();
    await app.close();
    await site.close();
    tmp.cleanup();
  });
  return { site, url, ac };
}
