import type { Duplex } from 'node:stream';
import { HavenError, isHavenErrorCode, protocolError } from '../../common/index.js';
import { FRAME_HEADER, Frame, type FrameType, type ReceivedFrame } from '../../protection/index.js';

/**
 * Reads exactly one frame (the replication wire format) off `socket` and not a byte more, so
 * that whatever follows stays in the socket for the channel's own reader (a FrameReader, say).
 * `read(n)` returns n bytes or nothing, so nothing has to be pushed back; once the 'readable'
 * listener is gone the socket flows again for the next 'data' listener.
 */
export function readOneFrame(
  socket: Duplex,
  peer: string,
  opts: { maxBytes: number; timeoutMs: number },
): Promise<ReceivedFrame> {
  return new Promise((resolve, reject) => {
    let head: Buffer | undefined;
    const timer = setTimeout(
      () => finish(new HavenError('TIMEOUT', `${peer} sent nothing for ${opts.timeoutMs} ms`)),
      opts.timeoutMs,
    );
    const finish = (err: Error | undefined, frame?: ReceivedFrame) => {
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      if (err) reject(err);
      else resolve(frame!);
    };
    const onEnd = () => finish(new HavenError('IO', `${peer} closed the link`));
    const onError = (e: Error) => finish(new HavenError('IO', `the link with ${peer} failed: ${e.message}`));
    const onReadable = () => {
      if (!head) {
        const h = socket.read(FRAME_HEADER) as Buffer | null;
        if (!h) return;
        if (h.length < FRAME_HEADER) return onEnd();
        const length = h.readUInt32LE(4);
        if (length > opts.maxBytes)
          return finish(
            protocolError(`${peer} sent a frame of ${length} bytes (at most ${opts.maxBytes} here)`),
          );
        head = h;
        if (length === 0) return finish(undefined, frameOf(h, Buffer.alloc(0)));
      }
      const length = head.readUInt32LE(4);
      const body = socket.read(length) as Buffer | null;
      if (!body) return;
      if (body.length < length) return onEnd();
      finish(undefined, frameOf(head, body));
    };
    if (socket.destroyed) return onEnd();
    socket.on('readable', onReadable);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    onReadable();
  });
}

const frameOf = (head: Buffer, body: Buffer): ReceivedFrame => ({
  type: head[0] as FrameType,
  flags: head[1]!,
  body,
});

/**
 * The JSON object of a frame of type `want`; an error frame becomes a HavenError with its
 * message (and code, when it names one).
 */
export function jsonBody(f: ReceivedFrame, want: FrameType, peer: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(f.body.toString('utf8'));
  } catch {
    throw protocolError(`${peer} sent a frame whose body is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw protocolError(`${peer} sent a frame whose body is not a JSON object`);
  const o = v as Record<string, unknown>;
  if (f.type === Frame.error && want !== Frame.error)
    throw new HavenError(
      typeof o.code === 'string' && isHavenErrorCode(o.code) ? o.code : 'PROTOCOL',
      `${peer}: ${typeof o.message === 'string' ? o.message : 'error'}`,
    );
  if (f.type !== want) throw protocolError(`${peer} sent a frame of type ${f.type}, expected ${want}`);
  return o;
}
