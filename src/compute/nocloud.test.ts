import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { tempDir } from '../../test/support/tmp.js';
import { checkRecoverySettings, nicMac, writeSeed } from './nocloud.js';
import { qemuCommandLine } from './qemu-driver.js';

const run = promisify(execFile);

test('recovery settings: addresses with prefixes, gateways and DNS as IPs, no NIC beyond the VM’s, a host name', () => {
  assert.deepEqual(
    checkRecoverySettings(
      'vm',
      { hostname: 'db.example', nics: [{ address: 'fd00::5/64', dns: ['fd00::53'] }] },
      1,
    ),
    { hostname: 'db.example', nics: [{ address: 'fd00::5/64', dns: ['fd00::53'] }] },
  );
  const bad: [unknown, RegExp][] = [
    [{ nics: [{ address: '10.0.0.5' }] }, /10\.0\.0\.5 is not an address with a prefix length/],
    [{ nics: [{ address: '10.0.0.5/33' }] }, /not an address with a prefix length/],
    [{ nics: [{ address: '10.0.0.300/24' }] }, /not an address/],
    [{ nics: [{ gateway: 'router' }] }, /gateway router is not an IP address/],
    [{ nics: [{ dns: ['1.1.1.1', 'x'] }] }, /DNS server x is not an IP address/],
    [{ nics: [{}, {}] }, /VM vm has 1 NIC\(s\): no settings for NIC 1/],
    [{ hostname: 'a_b' }, /not a host name/],
    [[], /not an object/],
  ];
  for (const [raw, re] of bad) assert.throws(() => checkRecoverySettings('vm', raw, 1), re);
});

test('a MAC per VM and NIC: stable, locally administered, distinct', () => {
  assert.equal(nicMac('db', 0), nicMac('db', 0));
  assert.notEqual(nicMac('db', 0), nicMac('db', 1));
  assert.notEqual(nicMac('db', 0), nicMac('web', 0));
  assert.match(nicMac('db', 0), /^52:54:00(:[0-9a-f]{2}){3}$/);
});

test('the seed is a "cidata" ISO that isoinfo reads back; QEMU gets it as a read-only CD-ROM, the NICs their MACs', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const mac = nicMac('db', 0);
  const iso = await writeSeed(dir.path, 'db', 'inst-1', { nics: [{ address: '10.2.0.5/24' }] }, [mac]);
  assert.match((await run('isoinfo', ['-d', '-i', iso])).stdout, /Volume id: cidata/);
  const read = async (f: string) => (await run('isoinfo', ['-R', '-i', iso, '-x', `/${f}`])).stdout;
  assert.deepEqual(JSON.parse(await read('meta-data')), { 'instance-id': 'inst-1', 'local-hostname': 'db' });
  assert.match(await read('user-data'), /^#cloud-config\n/);
  assert.deepEqual(JSON.parse(await read('network-config')), {
    version: 2,
    ethernets: { nic0: { match: { macaddress: mac }, addresses: ['10.2.0.5/24'] } },
  });
  const args = qemuCommandLine(
    {
      id: 'x',
      name: 'db',
      cpus: 1,
      memoryMiB: 64,
      disks: [],
      nics: [{ network: { kind: 'user' }, mac }],
      boot: { kind: 'kernel', kernel: '/k' },
      seed: iso,
    },
    dir.path,
  );
  const blockdev = args.find((a) => a.includes('"node-name":"seed"'));
  assert.ok(
    blockdev && JSON.parse(blockdev).file.filename === iso && JSON.parse(blockdev)['read-only'] === true,
  );
  assert.ok(args.includes('ide-cd,drive=seed,id=seed0'));
  assert.ok(args.some((a) => a.endsWith(`,mac=${mac}`)));
  assert.throws(
    () =>
      qemuCommandLine(
        {
          id: 'x',
          name: 'db',
          cpus: 1,
          memoryMiB: 64,
          disks: [],
          nics: [{ network: { kind: 'user' }, mac: 'zz' }],
          boot: { kind: 'disk' },
        },
        dir.path,
      ),
    /zz is not a MAC address/,
  );
});
