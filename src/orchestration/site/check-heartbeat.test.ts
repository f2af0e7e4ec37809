// The heartbeat a recoverability check waits for, as the CLI, the API and schedules state it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseHeartbeat } from './check-heartbeat.js';

test('agent (the default), console:REGEX, tcp:HOST:PORT', () => {
  assert.deepEqual(parseHeartbeat(undefined), { kind: 'agent' });
  assert.deepEqual(parseHeartbeat('agent'), { kind: 'agent' });
  const c = parseHeartbeat('console:^login: ');
  assert.ok(c.kind === 'console' && c.pattern.test('boot\nlogin: ') && c.pattern.multiline);
  assert.deepEqual(parseHeartbeat('tcp:10.0.0.5:22'), { kind: 'tcp', host: '10.0.0.5', port: 22 });
  assert.deepEqual(parseHeartbeat('tcp:[::1]:8080'), { kind: 'tcp', host: '::1', port: 8080 });
});

test('bad heartbeats: clear errors', () => {
  assert.throws(() => parseHeartbeat('console:('), /console:\( is not a regular expression/);
  assert.throws(() => parseHeartbeat('console:'), /needs a pattern/);
  assert.throws(() => parseHeartbeat('tcp:22'), /names no host: .*isolated network is not reachable/);
  assert.throws(() => parseHeartbeat('tcp:h:99999'), /is not tcp:HOST:PORT/);
  assert.throws(() => parseHeartbeat('ping'), /is not agent, console:REGEX or tcp:HOST:PORT/);
});
