import type { TLSSocket } from 'node:tls';
import {
  HavenError,
  conflict,
  errorMessage,
  isHavenErrorCode,
  logger,
  notFound,
} from '../../common/index.js';
import { Frame, jsonFrame } from '../../protection/index.js';
import { jsonBody, readOneFrame } from './peer-frames.js';
import type { PeerLinks } from './peer-link.js';
import type { Peer } from './peer-store.js';

const log = logger('peer-rpc');

/** What an operation a peer may call does: its answer must be JSON. */
export type PeerOperation = (peer: Peer, args: unknown) => Promise<unknown>;

/** Requests and answers are control messages, not data. */
const MAX_MESSAGE = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;
/** How long a listener waits for the request once the link is open. */
const REQUEST_WAIT_MS = 10_000;

/**
 * Calls between paired sites over the peer link's 'rpc' channel: one link per call, carrying
 * one request frame ({ op, args }) and one response frame ({ ok: true, result } or
 * { ok: false, code, message }). A remote failure is rethrown at the caller with its code.
 */
export class PeerRpc {
  private readonly ops = new Map<string, PeerOperation>();

  constructor(
    private readonly site: string,
    private readonly links: PeerLinks,
  ) {
    links.onChannel('rpc', (socket, peer) => void this.serve(socket, peer));
  }

  handle(op: string, fn: PeerOperation): void {
    if (this.ops.has(op)) throw conflict(`the peer operation ${op} has a handler already`);
    this.ops.set(op, fn);
  }

  async call(
    peerName: string,
    op: string,
    args: unknown,
    opts: { timeoutMs?: number } = {},
  ): Promise<unknown> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const who = `site ${peerName}`;
    const socket = await this.links.dial(peerName, { channel: 'rpc' });
    try {
      await jsonFrame(socket, Frame.request, { op, args: args ?? null });
      const f = await readOneFrame(socket, who, { maxBytes: MAX_MESSAGE, timeoutMs }).catch(
        (err: HavenError) => {
          throw err.code === 'TIMEOUT'
            ? new HavenError('TIMEOUT', `${who} did not answer ${op} within ${timeoutMs} ms`)
            : err;
        },
      );
      const answer = jsonBody(f, Frame.response, who);
      if (answer.ok === true) return answer.result;
      const code =
        typeof answer.code === 'string' && isHavenErrorCode(answer.code) ? answer.code : 'INTERNAL';
      throw new HavenError(code, `${who}: ${op}: ${String(answer.message)}`);
    } finally {
      socket.destroy();
    }
  }

  private async serve(socket: TLSSocket, peer: Peer): Promise<void> {
    const who = `site ${peer.name}`;
    let op = '?';
    let answer: Record<string, unknown>;
    try {
      const req = jsonBody(
        await readOneFrame(socket, who, { maxBytes: MAX_MESSAGE, timeoutMs: REQUEST_WAIT_MS }),
        Frame.request,
        who,
      );
      op = String(req.op);
      const fn = this.ops.get(op);
      if (!fn) throw notFound(`site ${this.site} has no peer operation ${op}`);
      answer = { ok: true, result: (await fn(peer, req.args)) ?? null };
    } catch (err) {
      if (socket.destroyed) return;
      const known = err instanceof HavenError && err.code !== 'INTERNAL';
      if (!known) log.error({ peer: peer.name, op, err: errorMessage(err) }, 'peer operation failed');
      answer = {
        ok: false,
        code: err instanceof HavenError ? err.code : 'INTERNAL',
        message: errorMessage(err),
      };
    }
    await jsonFrame(socket, Frame.response, answer)
      .then(() => socket.end())
      .catch(() => socket.destroy());
  }
}
