// Where a recovered VM's NICs go (haven recover instant --network): its own networks by default,
// none, one network for all, or a mapping that must name every network of the backed-up VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { recoveredNics } from './recovery-networks.js';

const vm = [{ network: 'prod' }, { network: 'back' }, { network: 'prod' }];
const site = ['nat', 'prod', 'lab', 'lab2'];

test('default: the backed-up networks this site has; the rest left out and named', () => {
  assert.deepEqual(recoveredNics(vm, undefined, site), {
    nics: [{ network: 'prod' }, { network: 'prod' }],
    leftOut: ['back'],
  });
});

test('none, one network, a mapping', () => {
  assert.deepEqual(recoveredNics(vm, 'none', site).nics, []);
  assert.deepEqual(recoveredNics(vm, 'lab', site).nics, [
    { network: 'lab' },
    { network: 'lab' },
    { network: 'lab' },
  ]);
  assert.deepEqual(recoveredNics(vm, 'prod=lab, back=lab2', site).nics, [
    { network: 'lab' },
    { network: 'lab2' },
    { network: 'lab' },
  ]);
  assert.deepEqual(recoveredNics(vm, 'prod=lab,back=none', site).nics, [
    { network: 'lab' },
    { network: 'lab' },
  ]);
});

test('bad --network: clear errors naming the network and the fix', () => {
  assert.throws(
    () => recoveredNics(vm, 'nowhere', site),
    /network nowhere does not exist .*haven network create/,
  );
  assert.throws(
    () => recoveredNics(vm, 'prod=lab', site),
    /NIC on network back goes: add back=NEW or back=none/,
  );
  assert.throws(
    () => recoveredNics(vm, 'prod=lab,back=none,web=lab', site),
    /maps network web, but .*no NIC on it/,
  );
  assert.throws(() => recoveredNics(vm, 'prod=lab,prod=lab2,back=none', site), /maps network prod twice/);
  assert.throws(() => recoveredNics(vm, 'prod=,back=none', site), /is not OLD=NEW/);
  assert.throws(() => recoveredNics(vm, 'prod=gone,back=none', site), /network gone does not exist/);
});
