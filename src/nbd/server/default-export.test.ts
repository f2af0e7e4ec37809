// Meta contexts and the default export at the protocol level, with a raw client (no peer spells
// these sequences on demand): SET_META_CONTEXT on "" and GO/EXPORT_NAME on the export's name (and
// the other way round) are one export; on another export the contexts are dropped; STARTTLS
// forgets what was negotiated in the clear; a server without a default export refuses "".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile, type BitmapView } from '../../block/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { RawNbd } from '../../../test/support/nbd-raw.js';
import { makeTestPki } from '../../../test/support/tls.js';
import * as P from '../protocol.js';
import { NbdServer, type NbdServerOptions } from './server.js';

const MiB = 1024 * 1024;

/** Bytes of a socket as they come, read by length. */
class Raw extends RawNbd {
  /** One BLOCK_STATUS of the first MiB: the reply's type (structured) or error (simple). */
  async blockStatus(): Promise<{ structuredType?: number; simpleError?: number }> {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(P.REQUEST_MAGIC, 0);
    h.writeUInt16BE(P.CMD_BLOCK_STATUS, 6);
    h.writeUInt32BE(MiB, 24);
    this.socket.write(h);
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === P.SIMPLE_REPLY_MAGIC) return { simpleError: (await this.read(12)).readUInt32BE(0) };
    const c = await this.read(16);
    await this.read(c.readUInt32BE(12));
    return { structuredType: c.readUInt16BE(2) };
  }
}

async function raw(path: string): Promise<Raw> {
  const r = new Raw(createConnection(path));
  await r.read(18); // greeting
  const f = Buffer.alloc(4);
  f.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0);
  r.socket.write(f);
  return r;
}

const str = (s: string) => {
  const b = Buffer.from(s);
  const l = Buffer.alloc(4);
  l.writeUInt32BE(b.length, 0);
  return Buffer.concat([l, b]);
};
const setMeta = (name: string, ...queries: string[]) => {
  const n = Buffer.alloc(4);
  n.writeUInt32BE(queries.length, 0);
  return Buffer.concat([str(name), n, ...queries.map(str)]);
};
const go = (name: string) => Buffer.concat([str(name), Buffer.alloc(2)]);

async function serving(t: { after: (fn: () => unknown) => void }, opts: NbdServerOptions = {}) {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const file = join(tmp.path, 'd.img');
  writeFileSync(file, Buffer.alloc(4 * MiB, 1));
  const bitmap: BitmapView = {
    name: 'b0',
    granularity: 65536,
    status: (offset, length) => [{ offset, length, flags: 1 }],
  };
  const server = new NbdServer(opts);
  server.addExport({ name: 'd', device: openRawFile(file), bitmaps: [bitmap] });
  server.addExport({ name: 'other', device: openRawFile(file, { readOnly: true }) });
  const sock = join(tmp.path, 's.sock');
  await server.listen({ path: sock });
  t.after(() => server.close());
  return { sock, tmp: tmp.path };
}

/** Structured replies and `queries` set on `metaName`; true when the server chose them all. */
async function negotiate(r: Raw, metaName: string, ...queries: string[]): Promise<void> {
  assert.equal((await r.option(P.OPT_STRUCTURED_REPLY))[0]![0], P.REP_ACK);
  const replies = await r.option(P.OPT_SET_META_CONTEXT, setMeta(metaName, ...queries));
  assert.deepEqual(
    replies.map(([type]) => type),
    [...queries.map(() => P.REP_META_CONTEXT), P.REP_ACK],
  );
}

test('meta contexts set on the default export hold for it under either name, GO or EXPORT_NAME', async (t) => {
  const { sock } = await serving(t, { defaultExport: 'd' });
  const cases: [string, string, 'go' | 'export-name', string[]][] = [
    ['', '', 'go', ['base:allocation']],
    ['', '', 'export-name', ['base:allocation']],
    ['d', '', 'go', ['base:allocation']],
    ['', 'd', 'go', ['base:allocation', 'qemu:dirty-bitmap:b0']],
    ['', 'd', 'export-name', ['qemu:dirty-bitmap:b0']],
  ];
  for (const [metaName, goName, how, queries] of cases) {
    const r = await raw(sock);
    await negotiate(r, metaName, ...queries);
    if (how === 'go') assert.equal((await r.option(P.OPT_GO, go(goName))).at(-1)![0], P.REP_ACK);
    else {
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(P.IHAVEOPT, 0);
      h.writeUInt32BE(P.OPT_EXPORT_NAME, 8);
      h.writeUInt32BE(Buffer.byteLength(goName), 12);
      r.socket.write(Buffer.concat([h, Buffer.from(goName)]));
      await r.read(10); // size and flags
    }
    const what = `SET_META_CONTEXT "${metaName}", ${how} "${goName}"`;
    assert.deepEqual(await r.blockStatus(), { structuredType: P.REPLY_TYPE_BLOCK_STATUS }, what);
    r.socket.destroy();
  }

  // Contexts chosen for another export are not this one's.
  const r = await raw(sock);
  await negotiate(r, 'other', 'base:allocation');
  assert.equal((await r.option(P.OPT_GO, go(''))).at(-1)![0], P.REP_ACK);
  assert.deepEqual(await r.blockStatus(), { structuredType: P.REPLY_TYPE_ERROR });
  r.socket.destroy();
});

test('a server without a default export refuses the empty name, saying to name one', async (t) => {
  const { sock } = await serving(t);
  const r = await raw(sock);
  assert.equal((await r.option(P.OPT_STRUCTURED_REPLY))[0]![0], P.REP_ACK);
  for (const [opt, data] of [
    [P.OPT_SET_META_CONTEXT, setMeta('', 'base:allocation')],
    [P.OPT_LIST_META_CONTEXT, setMeta('')],
    [P.OPT_INFO, go('')],
    [P.OPT_GO, go('')],
  ] as const) {
    const [[type, msg]] = (await r.option(opt, data)) as [[number, Buffer]];
    assert.equal(type, P.REP_ERR_UNKNOWN, `option ${opt}`);
    assert.match(
      msg.toString(),
      /no default export: name one in the URI, e\.g\. nbd:\/\/HOST:PORT\/NAME \(2 exported/,
    );
  }
  // Named, it is all there (the connection is still usable).
  assert.equal((await r.option(P.OPT_GO, go('d'))).at(-1)![0], P.REP_ACK);
  r.socket.destroy();
  // NBD_OPT_EXPORT_NAME cannot be refused with a message: the server hangs up.
  const e = await raw(sock);
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(P.IHAVEOPT, 0);
  h.writeUInt32BE(P.OPT_EXPORT_NAME, 8);
  e.socket.write(h);
  assert.equal(await e.closed(), true);
});

test('STARTTLS forgets structured replies and meta contexts negotiated in the clear', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  mkdirSync(join(tmp.path, 'pki'));
  const pki = makeTestPki(join(tmp.path, 'pki'));
  const tls = { cert: pki.serverCert, key: pki.serverKey };
  const { sock } = await serving(t, { defaultExport: 'd', tls, tlsOnly: false });
  const r = await raw(sock);
  await negotiate(r, 'd', 'base:allocation');
  assert.equal((await r.option(P.OPT_STARTTLS))[0]![0], P.REP_ACK);
  const secure = tlsConnect({ socket: r.socket, ca: readFileSync(pki.caCert), servername: 'localhost' });
  r.socket.removeAllListeners('data');
  r.listen(secure);
  r.socket = secure;
  await new Promise<void>((res, rej) => secure.once('secureConnect', res).once('error', rej));
  assert.equal((await r.option(P.OPT_GO, go('d'))).at(-1)![0], P.REP_ACK);
  // No structured replies now: the refusal is a simple reply (EINVAL).
  assert.deepEqual(await r.blockStatus(), { simpleError: P.EINVAL });
  secure.destroy();
});
