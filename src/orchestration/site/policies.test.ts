// Storage policies: validation (nothing changes on bad input), placement by capability, the
// schedules an assignment hands to the scheduler, compliance reasons and their events. Pure parts
// directly; the rest on a real site in a temp data directory with a recording schedule sink.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { HavenError } from '../../common/index.js';
import { judge } from './compliance.js';
import { choosePool, type PlacementPool } from './placement.js';
import { allowedBackupAgeSeconds, policySchedules, validatePolicy, type PolicySpec } from './policy-spec.js';
import type { ScheduleSpec } from './schedule-spec.js';
import { Site } from './site.js';

const MiB = 1024 * 1024;
const code = (c: string, re?: RegExp) => (e: unknown) =>
  e instanceof HavenError && e.code === c && (!re || re.test(e.message));
const KNOWN = ['thin', 'snapshots', 'clones', 'encryption', 'replication', 'tier'];

test('validation: unknown capability, invalid cron, a retention that keeps nothing', () => {
  assert.throws(
    () => validatePolicy('p', { requires: ['dedup'] }, KNOWN),
    code(
      'INVALID_ARGUMENT',
      /unknown capability "dedup": known capabilities are clones, encryption, replication, snapshots, thin, tier/,
    ),
  );
  assert.throws(
    () => validatePolicy('p', { requires: [], backup: { cron: '61 * * * *', repo: '/r' } }, KNOWN),
    code('INVALID_ARGUMENT', /backup cron expression "61 \* \* \* \*" is not valid/),
  );
  assert.throws(
    () =>
      validatePolicy(
        'p',
        { requires: [], backup: { cron: '0 * * * *', repo: '/r', keep: { hourly: 0, daily: 0 } } },
        KNOWN,
      ),
    code('INVALID_ARGUMENT', /the backup retention keeps nothing/),
  );
  assert.throws(
    () => validatePolicy('p', { requires: [], snapshot: { everySeconds: 60, keep: {} } }, KNOWN),
    code('INVALID_ARGUMENT', /the snapshot retention keeps nothing/),
  );
  assert.throws(
    () => validatePolicy('p', { requires: [], verify: { cron: '0 3 * * *' } }, KNOWN),
    code('INVALID_ARGUMENT', /a verify schedule checks the backup repository/),
  );
  assert.throws(
    () => validatePolicy('p', { requires: [], snapshot: { cron: '0 * * * *', everySeconds: 60 } }, KNOWN),
    code('INVALID_ARGUMENT', /exactly one of a cron expression and an interval/),
  );
  assert.throws(
    () =>
      validatePolicy(
        'p',
        { requires: [], backup: { cron: '0 * * * *', timezone: 'Mars/Olympus', repo: '/r' } },
        KNOWN,
      ),
    code('INVALID_ARGUMENT', /time zone Mars\/Olympus/),
  );
  assert.throws(
    () => validatePolicy('p', { requires: [], replication: { to: 'b', rpoSeconds: 0 } }, KNOWN),
    code('INVALID_ARGUMENT', /RPO 0/),
  );
  assert.deepEqual(validatePolicy('p', { requires: ['thin', 'tier=gold', 'thin'] }, KNOWN).requires, [
    'thin',
    'tier=gold',
  ]);
});

test('the schedules a policy produces for an object', () => {
  const spec: PolicySpec = {
    requires: [],
    snapshot: { everySeconds: 900, keep: { last: 8 } },
    backup: {
      cron: '0 * * * *',
      timezone: 'Europe/Berlin',
      repo: '/r',
      passphraseFile: '/pw',
      keep: { hourly: 24, daily: 7, weekly: 4 },
    },
    verify: { cron: '0 3 * * 0' },
  };
  assert.deepEqual(policySchedules(spec, 'web'), [
    { kind: 'snapshot', target: 'web', everySeconds: 900, params: { keep: { last: 8 } } },
    {
      kind: 'backup',
      target: 'web',
      cron: '0 * * * *',
      timezone: 'Europe/Berlin',
      params: { repo: '/r', passphraseFile: '/pw', keep: { hourly: 24, daily: 7, weekly: 4 } },
    },
    { kind: 'verify', target: '/r', cron: '0 3 * * 0', params: { repo: '/r', passphraseFile: '/pw' } },
  ]);
  assert.deepEqual(policySchedules({ requires: ['thin'] }, 'web'), []);
  assert.equal(allowedBackupAgeSeconds({ cron: '0 * * * *' }), 7200);
  assert.equal(allowedBackupAgeSeconds({ everySeconds: 600 }), 1200);
});

test('placement: the satisfying pool with most free space; an explicit pool must satisfy; refusals name what is missing', () => {
  const pools: PlacementPool[] = [
    { name: 'a', capabilities: { thin: true as const, tier: 'standard' }, freeBytes: 900 },
    {
      name: 'b',
      capabilities: { thin: true as const, replication: true as const, tier: 'gold' },
      freeBytes: 100,
    },
    {
      name: 'c',
      capabilities: { thin: true as const, replication: true as const, tier: 'gold' },
      freeBytes: 500,
    },
  ];
  assert.equal(choosePool(pools, ['replication'], { policy: 'p' }), 'c');
  assert.equal(choosePool(pools, ['thin'], { policy: 'p' }), 'a');
  assert.throws(
    () => choosePool(pools, ['replication'], { policy: 'p', needBytes: 600 }),
    code('CONFLICT', /c has only 500 bytes free/),
  );
  assert.throws(
    () => choosePool(pools, ['replication'], { policy: 'p', pool: 'a' }),
    code('CONFLICT', /pool a does not satisfy policy p: it lacks replication/),
  );
  assert.throws(
    () => choosePool(pools, ['tier=platinum'], { policy: 'p' }),
    code(
      'CONFLICT',
      /no pool satisfies policy p \(tier=platinum\): a lacks tier=platinum \(it has tier=standard\); b lacks tier=platinum/,
    ),
  );
  assert.equal(choosePool(pools, ['tier=gold'], { policy: 'p', pool: 'b' }), 'b');
});

test('compliance reasons: capability, backup age, replication, RPO, verify damage', () => {
  const now = new Date('2026-12-01T12:00:00Z');
  const spec: PolicySpec = {
    requires: ['replication'],
    backup: { everySeconds: 3600, repo: '/r' },
    replication: { to: 'dr', rpoSeconds: 15 },
  };
  const vol = { volume: 'd', pool: 'default', capabilities: { thin: true as const } };
  const r = judge(
    spec,
    {
      volumes: [vol],
      newestBackup: { createdAt: '2026-12-01T08:00:00Z' },
      lastVerify: {
        id: 'j',
        state: 'failed',
        errorCode: 'CORRUPT',
        error: 'verify found 1 damaged chunk(s)',
      },
    },
    now,
  );
  assert.deepEqual(
    r.map((x) => x.code),
    ['capability', 'backup', 'replication', 'verify'],
  );
  assert.match(r[0]!.message, /pool default of volume d lacks capability replication/);
  assert.match(r[1]!.message, /is 14400 s old; the schedule allows 7200 s/);
  const ok = judge(
    spec,
    {
      volumes: [{ ...vol, capabilities: { replication: true } }],
      newestBackup: { createdAt: '2026-12-01T11:30:00Z' },
      replication: { group: 'g', peer: 'dr', rpoSeconds: 40 },
    },
    now,
  );
  assert.deepEqual(
    ok.map((x) => x.message),
    ['RPO 40 s of group g is above the target 15 s'],
  );
  const failedCheck = judge(
    { requires: [] },
    { volumes: [], lastCheck: { id: 'c1', state: 'failed', reason: 'no heartbeat within 60 s' } },
    now,
  );
  assert.deepEqual(
    failedCheck.map((x) => x.message),
    ['the last recoverability check (c1) failed: no heartbeat within 60 s'],
  );
});

test('a site: declared capabilities, placement of new volumes, assignment hands schedules to the sink, compliance events', async (t) => {
  const tmp = tempDir();
  const calls: [string, ScheduleSpec[]][] = [];
  const site = await Site.open({
    dataDir: join(tmp.path, 'data'),
    name: 'unit',
    nbdListen: 'none',
    schedules: { replaceOwned: (owner, specs) => void calls.push([owner, specs]) },
  });
  t.after(async () => {
    await site.close();
    tmp.cleanup();
  });
  const p = site.policies;
  assert.throws(
    () => p.create('a', 'gold', { requires: ['tier=gold', 'georedundant'] }),
    code('INVALID_ARGUMENT', /unknown capability "georedundant"/),
  );
  assert.deepEqual(p.list(), [], 'nothing was stored');
  site.volumes.createPool('a', 'repl', { capabilities: ['replication', 'tier=gold'] });
  assert.deepEqual(site.volumes.pool('repl').advertised, {
    tier: 'gold',
    thin: true,
    snapshots: true,
    clones: true,
    replication: true,
  });
  assert.throws(
    () => site.volumes.createPool('a', 'bad', { capabilities: ['Bad Name'] }),
    code('INVALID_ARGUMENT'),
  );
  assert.throws(() => site.volumes.pool('bad'), code('NOT_FOUND'), 'a refused pool is not made');
  const rpo = p.create('a', 'gold', {
    requires: ['replication', 'tier=gold'],
    backup: { cron: '0 * * * *', repo: join(tmp.path, 'repo'), keep: { hourly: 24 } },
  });
  assert.deepEqual(rpo.requires, ['replication', 'tier=gold']);

  assert.equal(
    (await site.volumes.createVolume('a', 'v1', 8 * MiB, undefined, { policy: 'gold' })).pool,
    'repl',
  );
  await assert.rejects(
    () => site.volumes.createVolume('a', 'v2', 8 * MiB, 'default', { policy: 'gold' }),
    code('CONFLICT', /pool default does not satisfy policy gold: it lacks replication, tier=gold/),
  );
  assert.equal((await site.volumes.createVolume('a', 'plain', 8 * MiB)).pool, 'default');
  assert.equal(p.policyOf('volume', 'v1')?.name, 'gold', 'a volume created under a policy has it');
  assert.deepEqual(calls.at(-1), [
    'policy:gold:v1',
    [
      {
        kind: 'backup',
        target: 'v1',
        cron: '0 * * * *',
        params: { repo: join(tmp.path, 'repo'), keep: { hourly: 24 } },
      },
    ],
  ]);

  site.vms.createVm('a', 'web', {
    cpus: 1,
    memoryMiB: 64,
    disks: [{ volume: 'plain' }],
    nics: [],
    boot: { kind: 'disk' },
  });
  const thin = p.create('a', 'thin', {
    requires: ['thin'],
    snapshot: { everySeconds: 600, keep: { last: 3 } },
  });
  p.assign('a', 'gold', { vm: 'web' });
  p.assign('a', thin.name, { vm: 'web' });
  assert.deepEqual(calls.slice(-2), [
    ['policy:gold:web', []],
    [
      'policy:thin:web',
      [{ kind: 'snapshot', target: 'web', everySeconds: 600, params: { keep: { last: 3 } } }],
    ],
  ]);
  p.assign('a', 'gold', { vm: 'web' });
  const n = calls.length;
  assert.throws(
    () => p.update('a', 'gold', { requires: ['replication'], snapshot: { cron: 'not a cron' } }),
    code('INVALID_ARGUMENT', /snapshot cron expression "not a cron" is not valid/),
  );
  assert.equal(calls.length, n, 'a refused update hands nothing to the scheduler');
  p.update('a', 'gold', { requires: ['replication', 'tier=gold'], snapshot: { everySeconds: 60 } });
  assert.deepEqual(
    calls.slice(n).sort((x, y) => x[0].localeCompare(y[0])),
    [
      ['policy:gold:v1', [{ kind: 'snapshot', target: 'v1', everySeconds: 60 }]],
      ['policy:gold:web', [{ kind: 'snapshot', target: 'web', everySeconds: 60 }]],
    ],
    'every object of an updated policy gets its new schedules',
  );
  assert.equal(
    (await site.volumes.createVolume('a', 'v3', 8 * MiB, undefined, { vm: 'web' })).pool,
    'repl',
    "placed by the VM's policy",
  );
  assert.throws(
    () => p.delete('a', 'gold'),
    code('CONFLICT', /policy gold is assigned to vm web, volume v1: unassign it first/),
  );

  const [c] = await p.compliance({ vm: 'web' });
  assert.equal(c!.compliant, false);
  assert.deepEqual(
    c!.reasons.map((r) => r.message),
    [
      'pool default of volume plain lacks capability replication',
      'pool default of volume plain lacks capability tier=gold (it has tier=standard)',
    ],
    'the updated policy backs nothing up: no backup reason',
  );
  assert.match(c!.reasons[0]!.message, /pool default of volume plain lacks capability replication/);
  await p.compliance({ vm: 'web' });
  const events = site.events.query({ action: 'policy.compliance', target: 'vm:web' });
  assert.equal(events.length, 1, 'an unchanged compliance is not a new event');
  assert.equal(events[0]!.outcome, 'warning');

  await site.volumes.deleteVolume('a', 'v1');
  assert.equal(p.policyOf('volume', 'v1'), undefined, 'a deleted volume loses its policy');
  assert.deepEqual(calls.at(-1), ['policy:gold:v1', []]);
  p.unassign('a', { vm: 'web' });
  assert.deepEqual(calls.at(-1), ['policy:gold:web', []]);
  await assert.rejects(p.compliance({ vm: 'web' }), code('NOT_FOUND', /VM web has no policy/));
});
