// Service objectives' pure parts: a spec is checked field by field; compliance of a group is a
// function of its measures and the time (each target judged, with a reason naming the group and
// the numbers); a DR job's result gives the RPO and RTO achieved (takeover, rehearsal, service, migrate).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HavenError } from '../../common/index.js';
import { measure } from './dr-reports.js';
import { checkObjectiveSpec, judgeObjective, type GroupMeasures } from './objectives.js';

const at = new Date('2026-12-07T03:00:00Z');
const ago = (s: number) => new Date(at.getTime() - s * 1000).toISOString();

test('objective specs: at least one target, each a positive number of seconds', () => {
  assert.deepEqual(checkObjectiveSpec('o', { rpoSeconds: 15, rtoSeconds: 300 }), {
    rpoSeconds: 15,
    rtoSeconds: 300,
  });
  assert.throws(
    () => checkObjectiveSpec('o', {}),
    (e: unknown) => e instanceof HavenError && /at least one target/.test(e.message),
  );
  assert.throws(() => checkObjectiveSpec('o', { rpoSeconds: 0 }), /RPO \(rpoSeconds\) must be more than 0/);
  assert.throws(() => checkObjectiveSpec('o', { historySeconds: 'x' }), /history window/);
});

test('compliance: each target judged from the measures, with reasons', () => {
  const spec = {
    rpoSeconds: 10,
    historySeconds: 3600,
    rehearsalMaxAgeSeconds: 86400,
    rtoSeconds: 120,
    backupMaxAgeSeconds: 3600,
  };
  const good: GroupMeasures = {
    group: 'g',
    rpoSeconds: 2,
    keepSeconds: 3600,
    lastRehearsal: { report: 'r1', at: ago(3600) },
    lastRecovery: { report: 'r1', kind: 'rehearse', at: ago(3600), seconds: 30 },
    backups: [{ vm: 'app', at: ago(60) }],
  };
  assert.deepEqual(judgeObjective(spec, good, at), []);
  const bad = judgeObjective(
    spec,
    {
      group: 'g',
      rpoSeconds: 42,
      keepSeconds: 600,
      lastRehearsal: { report: 'r1', at: ago(2 * 86400) },
      lastRecovery: { report: 'r2', kind: 'takeover', at: ago(10), seconds: 300 },
      backups: [
        { vm: 'app', at: ago(7200) },
        { vm: 'db', at: null },
      ],
    },
    at,
  );
  assert.deepEqual(
    bad.map((r) => r.code),
    ['rpo', 'history', 'rehearsal', 'rto', 'backup', 'backup'],
  );
  assert.match(bad[0]!.message, /group g's replica is 42 s old, more than the RPO of 10 s/);
  assert.match(bad[2]!.message, /report r1\) is 2 d old/);
  assert.match(bad[3]!.message, /last takeover \(report r2\) took 5 min, more than the RTO of 2 min/);
  assert.match(bad[5]!.message, /VM db of group g has no backup/);
  const none = judgeObjective(
    spec,
    {
      group: 'g',
      notReplicating: 'it is paused',
      lastRehearsal: null,
      lastRecovery: null,
      peerUnread: 'site b did not answer',
    },
    at,
  );
  assert.deepEqual(
    none.map((r) => r.code),
    ['replication', 'rehearsal', 'rto'],
  );
  assert.match(none[1]!.message, /never rehearsed successfully \(site b did not answer\)/);
  // Only the targets given are judged.
  assert.deepEqual(
    judgeObjective({ rpoSeconds: 10 }, { group: 'g', rpoSeconds: 1, lastRehearsal: null }, at),
    [],
  );
});

test('a DR result measured: RPO and RTO of a takeover, a rehearsal, a service, a migrate', () => {
  const cp = { seq: 7, time: '2026-12-07T02:59:58.000Z', snapshot: 'cp-7' };
  const t = measure('takeover', {
    group: 'g',
    checkpoint: cp,
    dataAgeSeconds: 1.5,
    elapsedSeconds: 4,
    vms: [{ name: 'app', state: 'running', startedAt: 'x' }],
  });
  assert.deepEqual(t, {
    groups: ['g'],
    checkpoints: [{ group: 'g', seq: 7, time: cp.time }],
    vms: [{ name: 'app', group: 'g', startedAt: 'x' }],
    rpoSeconds: 1.5,
    rtoSeconds: 4,
  });
  const r = measure('rehearse', {
    group: 'g',
    checkpoint: cp,
    startedAt: '2026-12-07T03:00:00.000Z',
    endedAt: '2026-12-07T03:00:09.500Z',
    vms: [{ name: 'app-rehearsal', passed: true, detail: 'ok' }],
  });
  assert.equal(r.rpoSeconds, 2);
  assert.equal(r.rtoSeconds, 9.5);
  assert.deepEqual(r.vms, [{ name: 'app-rehearsal', group: 'g', passed: true, detail: 'ok' }]);
  const s = measure('takeover', {
    service: 's',
    elapsedSeconds: 12,
    tiers: [
      { groups: [{ group: 'g1', checkpoint: cp, dataAgeSeconds: 1, vms: [] }] },
      { groups: [{ group: 'g2', checkpoint: cp, dataAgeSeconds: 3, vms: [] }] },
    ],
  });
  assert.deepEqual([s.groups, s.rpoSeconds, s.rtoSeconds], [['g1', 'g2'], 3, 12]);
  const m = measure('migrate', {
    group: 'g',
    checkpoint: cp,
    downtimeSeconds: 5.2,
    started: [{ name: 'app' }],
  });
  assert.deepEqual([m.rpoSeconds, m.rtoSeconds, m.vms.length], [0, 5.2, 1]);
});
