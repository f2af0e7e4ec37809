import { test } from 'node:test';
import assert from 'node:assert/strict';
import { prettyLogLine } from './log-format.js';

test('a pino line becomes one readable line: time, level, component, message, then the fields', () => {
  const time = Date.parse('2026-12-03T12:04:31.207Z');
  const line = JSON.stringify({
    level: 30,
    time,
    pid: 42,
    hostname: 'h',
    name: 'haven',
    component: 'daemon',
    msg: 'site daemon serving',
    site: 'paris',
    url: 'http://127.0.0.1:8710',
    dataDir: '/srv/my haven',
  });
  assert.equal(
    prettyLogLine(line),
    '12:04:31.207 INFO  daemon: site daemon serving site=paris url=http://127.0.0.1:8710 dataDir="/srv/my haven"\n',
  );
  assert.equal(
    prettyLogLine(JSON.stringify({ level: 40, time, msg: 'slow', job: { id: 'j1' } }), true),
    '12:04:31.207 \x1b[33mWARN \x1b[0m slow job={"id":"j1"}\n',
  );
  const withErr = prettyLogLine(
    JSON.stringify({
      level: 50,
      time,
      msg: 'failed',
      err: { message: 'boom', stack: 'Error: boom\n    at x' },
    }),
  );
  assert.equal(withErr, '12:04:31.207 ERROR failed\n    Error: boom\n        at x\n');
});

test('what is not a pino line passes through unchanged', () => {
  assert.equal(prettyLogLine('not json'), 'not json');
  assert.equal(prettyLogLine('{"no":"level"}'), '{"no":"level"}');
});
