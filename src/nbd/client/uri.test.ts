import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HavenError } from '../../common/index.js';
import { formatNbdUri, isNbdUri, parseNbdUri } from './uri.js';
import { sliceChunks } from './device.js';

test('NBD URIs of every scheme parse as doc/uri.md says', () => {
  const a = parseNbdUri('nbd://example.com:10810/disk');
  assert.deepEqual(a.transport, { kind: 'tcp', host: 'example.com', port: 10810 });
  assert.equal(a.exportName, 'disk');
  assert.equal(a.tls, false);

  assert.equal(parseNbdUri('nbd://example.com').exportName, '');
  assert.equal(parseNbdUri('nbd://example.com/').exportName, '');
  assert.equal(parseNbdUri('nbd://example.com//disk').exportName, '/disk');
  assert.equal(parseNbdUri('nbd://example.com/hello%20world').exportName, 'hello world');
  assert.deepEqual(parseNbdUri('nbd://example.com/x').transport, {
    kind: 'tcp',
    host: 'example.com',
    port: 10809,
  });
  assert.deepEqual(parseNbdUri('nbd://[::1]:99/x').transport, { kind: 'tcp', host: '::1', port: 99 });

  const s = parseNbdUri('nbds://127.0.0.1/e?tls-hostname=server.example&tls-verify-peer=0');
  assert.equal(s.tls, true);
  assert.equal(s.tlsHostname, 'server.example');
  assert.equal(s.tlsVerifyPeer, false);

  const u = parseNbdUri('nbd+unix:///vol%2F1?socket=/run/nbd%20x.sock');
  assert.deepEqual(u.transport, { kind: 'unix', path: '/run/nbd x.sock' });
  assert.equal(u.exportName, 'vol/1');
  assert.equal(parseNbdUri('nbds+unix:///?socket=s').tls, true);

  assert.ok(isNbdUri('nbds+unix:///x?socket=y'));
  assert.ok(!isNbdUri('/var/lib/disk.raw'));
  assert.ok(!isNbdUri('nbdfile.raw'));
});

test('formatNbdUri round-trips', () => {
  for (const t of [
    'nbd://h/a%20b',
    'nbds://h:99/x',
    'nbd+unix:///e?socket=%2Ftmp%2Fs',
    'nbd://%5B::1%5D/x',
  ]) {
    const p = parseNbdUri(t.replace('%5B', '[').replace('%5D', ']'));
    assert.deepEqual(parseNbdUri(formatNbdUri(p)).transport, p.transport);
    assert.equal(parseNbdUri(formatNbdUri(p)).exportName, p.exportName);
  }
});

test('bad NBD URIs are refused with a message that says what is wrong', () => {
  const cases: [string, RegExp][] = [
    ['disk.raw', /not a URI/],
    ['http://host/x', /unknown scheme 'http'/],
    ['nbd+unix:///x', /needs '\?socket=PATH'/],
    ['nbd+unix://host/x?socket=s', /takes no host/],
    ['nbd://host/x?socket=s', /socket=.*nbd\+unix/],
    ['nbd://host/x?foo=1', /unknown query parameter 'foo'/],
    ['nbd://host:99999/x', /bad NBD URI|port/],
    ['nbd://host/x?tls-verify-peer=yes', /tls-verify-peer must be 0 or 1/],
    ['nbd://host/x?tls-type=psk', /tls-type 'psk'/],
    ['nbd://host/%zz', /percent-encoding/],
    ['nbd://host/a%00b', /NUL/],
    ['nbd://user@host/x', /user information/],
    ['nbd:///x', /no host/],
  ];
  for (const [uri, re] of cases) {
    assert.throws(
      () => parseNbdUri(uri),
      (e: unknown) => e instanceof HavenError && e.code === 'INVALID_ARGUMENT' && re.test(e.message),
      uri,
    );
  }
});

test('sliceChunks gives views across chunk boundaries without copying', () => {
  const a = new Uint8Array([1, 2, 3]);
  const b = new Uint8Array([4, 5]);
  const c = new Uint8Array([6, 7, 8, 9]);
  const s = sliceChunks([a, b, c], 2, 5);
  assert.deepEqual(
    s.map((x) => [...x]),
    [[3], [4, 5], [6, 7]],
  );
  assert.equal(s[0]!.buffer, a.buffer);
});
