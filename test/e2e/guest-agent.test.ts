// The guest agent client (src/compute/guest-agent.ts) against the test guest's agent over a real
// virtio-serial channel: sync past stale answers an earlier client left in the channel, freeze
// and thaw a mounted ext4 (the guest reports both), errors of the agent as errors, and a silent
// agent as a TIMEOUT within the bound asked for — never a hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { GuestAgent, GUEST_AGENT_PORT } from '../../src/compute/index.js';
import { HavenError } from '../../src/common/index.js';
import { launchGuest, makeExt4Disk } from '../support/guest.js';
import { tempDir } from '../support/tmp.js';

test('guest agent: sync past stale answers, freeze and thaw, agent errors, a silent agent times out', async (t) => {
  const tmp = tempDir('haven-qga-');
  t.after(() => tmp.cleanup());
  const disk = join(tmp.path, 'root.img');
  await makeExt4Disk(disk, 32 * 1024 * 1024, { 'hello.txt': 'hello\n' });
  const socket = join(tmp.path, 'qga.sock');
  const guest = launchGuest({
    drives: [{ path: disk }],
    command: 'fs disk=vda seed=1 write=/a.txt:8K keep=1',
    extraArgs: [
      ...['-chardev', `socket,id=qga0,path=${socket},server=on,wait=off`],
      ...['-device', 'virtio-serial-pci,id=vser0'],
      ...['-device', `virtserialport,bus=vser0.0,chardev=qga0,name=${GUEST_AGENT_PORT}`],
    ],
  });
  t.after(() => guest.kill());
  const ready = await guest.ready();
  assert.match(String(ready.agent), /^\/dev\/vport\d+p\d+$/, 'the guest found its agent port');
  await guest.commandLineDone(1);

  // An earlier client that asked and left without reading: its answers are skipped.
  const raw = createConnection(socket);
  await once(raw, 'connect');
  raw.end('{"execute":"guest-sync-delimited","arguments":{"id":7}}\n{"execute":"guest-info"}\n');
  await once(raw, 'close');
  const agent = await GuestAgent.connect(socket, 10_000);
  t.after(() => agent.close());
  assert.deepEqual(await agent.execute('guest-ping'), {});
  assert.equal(await agent.execute('guest-fsfreeze-status'), 'thawed');

  // Freeze and thaw the mounted file system; the guest reports both, in order.
  const from = guest.results.length;
  assert.equal(await agent.execute('guest-fsfreeze-freeze'), 1);
  assert.equal(await agent.execute('guest-fsfreeze-status'), 'frozen');
  assert.equal(await agent.execute('guest-fsfreeze-thaw'), 1);
  assert.equal(await agent.execute('guest-fsfreeze-status'), 'thawed');
  await guest.waitFor((r) => r.event === 'fsfreeze' && r.state === 'thawed', { from });
  assert.deepEqual(
    guest.results
      .slice(from)
      .filter((r) => r.event === 'fsfreeze')
      .map((r) => [r.state, r.mounts]),
    [
      ['frozen', ['/mnt']],
      ['thawed', ['/mnt']],
    ],
  );
  // The thawed file system takes writes again.
  await guest.run('fs disk=vda seed=1 write=/b.txt:8K keep=1');

  // The agent's errors are errors, naming the command.
  await assert.rejects(agent.execute('guest-frobnicate'), /guest-frobnicate failed: .*not been found/);
  await guest.run('agent mode=fail-freeze');
  await assert.rejects(
    agent.execute('guest-fsfreeze-freeze'),
    /guest-fsfreeze-freeze failed: freezing is made to fail/,
  );
  assert.equal(await agent.execute('guest-fsfreeze-status'), 'thawed');

  // A silent agent: a TIMEOUT within the bound, on connect and on a command.
  await guest.run('agent mode=off');
  const t0 = Date.now();
  await assert.rejects(agent.execute('guest-ping', undefined, 1500), (e: unknown) => {
    assert.ok(e instanceof HavenError && e.code === 'TIMEOUT', String(e));
    assert.match(e.message, /did not answer guest-ping within 1500 ms/);
    return true;
  });
  agent.close();
  await assert.rejects(
    GuestAgent.connect(socket, 1500),
    /did not answer guest-sync-delimited within 1500 ms/,
  );
  const took = Date.now() - t0;
  assert.ok(took < 5000, `two time-outs of 1.5 s took ${took} ms`);

  // Back on: a new session syncs past whatever the silent period left.
  await guest.run('agent mode=on');
  const again = await GuestAgent.connect(socket, 10_000);
  assert.deepEqual(await again.execute('guest-ping'), {});
  again.close();

  // No channel at all: a clear error naming the socket.
  await assert.rejects(
    GuestAgent.connect(join(tmp.path, 'none.sock'), 1000),
    /cannot connect to the guest agent channel .*none\.sock/,
  );
  await guest.poweroff();
});
