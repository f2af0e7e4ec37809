import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';

/**
 * A TCP proxy between two peers that a test can cut: `cut()` drops every connection through it
 * and refuses new ones until `heal()`. Counts the bytes it forwards each way.
 */
export class FaultProxy {
  private readonly server = createServer((c) => this.accept(c));
  private readonly pairs = new Set<[Socket, Socket]>();
  private down = false;
  /** Bytes forwarded client → target, and back. */
  upBytes = 0;
  downBytes = 0;

  private constructor(private readonly target: { host: string; port: number }) {}

  static async start(target: { host?: string; port: number }): Promise<FaultProxy> {
    const p = new FaultProxy({ host: target.host ?? '127.0.0.1', port: target.port });
    await new Promise<void>((r) => p.server.listen(0, '127.0.0.1', r));
    return p;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  cut(): void {
    this.down = true;
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  heal(): void {
    this.down = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }

  private accept(client: Socket): void {
    if (this.down) {
      client.destroy();
      return;
    }
    const upstream = createConnection(this.target.port, this.target.host);
    // Forwarded as it comes, as a router would (no Nagle delay added by the proxy).
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const pair: [Socket, Socket] = [client, upstream];
    this.pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('data', (d: Buffer) => {
      this.upBytes += d.length;
      if (!upstream.write(d)) client.pause();
    });
    upstream.on('drain', () => client.resume());
    upstream.on('data', (d: Buffer) => {
      this.downBytes += d.length;
      if (!client.write(d)) upstream.pause();
    });
    client.on('drain', () => upstream.resume());
    for (const s of pair) {
      s.on('error', drop);
      s.on('close', drop);
    }
  }
}
