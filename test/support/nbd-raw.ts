/**
 * A raw NBD client for protocol-level tests: bytes in, bytes out, so that a test can spell the
 * sequences no peer tool sends on demand. `read(n)` waits for exactly n bytes; `option` sends
 * one fixed-newstyle option and collects its replies up to the final one.
 */
import type { Socket } from 'node:net';
import * as P from '../../src/nbd/protocol.js';

export class RawNbd {
  private buf = Buffer.alloc(0);
  private want: (() => void) | undefined;
  ended = false;
  constructor(public socket: Socket) {
    this.listen(socket);
  }
  /** Reads from `s` from now on (after STARTTLS: the TLS socket over the plain one). */
  listen(s: Socket): void {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.want?.();
    });
    s.on('close', () => ((this.ended = true), this.want?.()));
    s.on('error', () => undefined);
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error('connection closed');
      await new Promise<void>((r) => (this.want = r));
    }
    const b = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return b;
  }
  async closed(): Promise<boolean> {
    while (!this.ended) await new Promise<void>((r) => (this.want = r));
    return true;
  }
  /** Sends an option; resolves with its replies up to the final one: [type, data][]. */
  async option(opt: number, data: Buffer = Buffer.alloc(0)): Promise<[number, Buffer][]> {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([h, data]));
    const out: [number, Buffer][] = [];
    for (;;) {
      const r = await this.read(20);
      const type = r.readUInt32BE(12);
      out.push([type, await this.read(r.readUInt32BE(16))]);
      if (type !== P.REP_META_CONTEXT && type !== P.REP_INFO && type !== P.REP_SERVER) return out;
    }
  }
}
