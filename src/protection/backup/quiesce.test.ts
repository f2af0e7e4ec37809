// quiescedSnapshot's order and fallbacks with a guest-agent test double (the `agent` argument)
// and real hook scripts: freeze before the snapshot and thaw after it, thaw even when the freeze
// failed, crash consistency with the reason instead of failing, and --require-app-consistent
// failing before any snapshot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { quiescedSnapshot, type GuestFreezer } from './quiesce.js';

function freezer(events: string[], opts: { freezeFails?: string; thawFails?: string } = {}): GuestFreezer {
  return {
    freeze: async (timeoutMs) => {
      events.push(`freeze ${timeoutMs}`);
      if (opts.freezeFails) throw new Error(opts.freezeFails);
      return 2;
    },
    thaw: async () => {
      events.push('thaw');
      if (opts.thawFails) throw new Error(opts.thawFails);
      return 2;
    },
    close: () => void events.push('close'),
  };
}

const base = (events: string[], logs: string[]) => ({
  vm: 'vm1',
  freezeTimeoutMs: 1234,
  log: (m: string, level = 'info') => void logs.push(`${level}: ${m}`),
  agent: async () => freezer(events),
});

test('freeze, snapshot, thaw, close: in that order, application-consistent', async () => {
  const events: string[] = [];
  const logs: string[] = [];
  const r = await quiescedSnapshot(base(events, logs), () => void events.push('snapshot'));
  assert.deepEqual(events, ['freeze 1234', 'snapshot', 'thaw', 'close']);
  assert.equal(r.consistency, 'application');
  assert.equal(r.reason, undefined);
  assert.ok(typeof r.frozenMs === 'number' && r.frozenMs >= 0);
  assert.ok(logs.some((l) => /froze 2 file system/.test(l)));
});

test('a failed freeze is still thawed, and the backup is crash-consistent with the reason', async () => {
  const events: string[] = [];
  const logs: string[] = [];
  const r = await quiescedSnapshot(
    { ...base(events, logs), agent: async () => freezer(events, { freezeFails: 'fsfreeze timed out' }) },
    () => void events.push('snapshot'),
  );
  assert.deepEqual(events, ['freeze 1234', 'snapshot', 'thaw', 'close']);
  assert.deepEqual(r, { consistency: 'crash', reason: 'fsfreeze timed out' });
  assert.ok(logs.some((l) => /^warning: backing up crash-consistent: fsfreeze timed out/.test(l)));
});

test('no agent: crash-consistent; with requireAppConsistent it fails before the snapshot', async () => {
  const events: string[] = [];
  const logs: string[] = [];
  const noAgent = async (): Promise<GuestFreezer> => {
    throw new Error('no guest agent socket');
  };
  const r = await quiescedSnapshot(
    { ...base(events, logs), agent: noAgent },
    () => void events.push('snapshot'),
  );
  assert.deepEqual(events, ['snapshot']);
  assert.deepEqual(r, { consistency: 'crash', reason: 'no guest agent socket' });

  const strict: string[] = [];
  await assert.rejects(
    quiescedSnapshot(
      {
        ...base(strict, logs),
        requireAppConsistent: true,
        agent: async () => freezer(strict, { freezeFails: 'EIO' }),
      },
      () => void strict.push('snapshot'),
    ),
    (e: Error & { code?: string }) =>
      e.code === 'CONFLICT' &&
      /VM vm1: no application-consistent backup \(--require-app-consistent\): EIO/.test(e.message),
  );
  assert.deepEqual(strict, ['freeze 1234', 'thaw', 'close'], 'no snapshot, but the guest is thawed');
});

test('a failed thaw is logged as an error; the snapshot stands', async () => {
  const events: string[] = [];
  const logs: string[] = [];
  const r = await quiescedSnapshot(
    { ...base(events, logs), agent: async () => freezer(events, { thawFails: 'agent gone' }) },
    () => void events.push('snapshot'),
  );
  assert.equal(r.consistency, 'application');
  assert.ok(
    logs.some((l) => l === "error: the guest's file systems may still be frozen: thaw failed: agent gone"),
  );
});

test('hooks: a failing pre-freeze hook skips the freeze; the post-thaw hook runs and is told the consistency', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const out = join(tmp.path, 'out');
  const hook = (name: string, body: string) => {
    const p = join(tmp.path, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };
  const pre = hook('pre', `echo "pre $HAVEN_VM $HAVEN_HOOK_PHASE" >> ${out}; echo db busy; exit 3`);
  const post = hook('post', `echo "post $HAVEN_HOOK_PHASE $HAVEN_CONSISTENCY" >> ${out}`);
  const events: string[] = [];
  const logs: string[] = [];
  const r = await quiescedSnapshot(
    { ...base(events, logs), preFreezeHook: pre, postThawHook: post },
    () => void events.push('snapshot'),
  );
  assert.deepEqual(events, ['snapshot'], 'no freeze after a failed pre-freeze hook');
  assert.deepEqual(r, {
    consistency: 'crash',
    reason: 'the pre-freeze hook failed (exit status 3: db busy)',
  });
  assert.equal(readFileSync(out, 'utf8'), 'pre vm1 pre-freeze\npost post-thaw crash\n');
});
