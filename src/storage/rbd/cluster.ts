import { HavenError, invalidArgument } from '../../common/index.js';
import {
  check,
  nativeRbd,
  rbdError,
  type ClusterHandle,
  type IoctxHandle,
  type NativeRbd,
} from './native.js';

/** How long connecting (and any monitor operation) may take before it fails. */
export const CEPH_CONNECT_TIMEOUT_S = 10;
/**
 * How long one OSD operation may take before it fails with ETIMEDOUT: bounded, so that a lost
 * cluster never hangs a request forever, and long enough to ride out an OSD's failover.
 */
export const CEPH_OSD_TIMEOUT_S = 120;

export interface CephConnectOptions {
  /** Seconds for connecting and monitor operations (default CEPH_CONNECT_TIMEOUT_S). */
  timeoutSeconds?: number;
  osdTimeoutSeconds?: number;
}

/** A connection to a Ceph cluster (librados), and I/O contexts on its pools. */
export class CephCluster {
  private closed = false;
  private readonly ioctxs = new Map<string, IoctxHandle>();

  private constructor(
    readonly rbd: NativeRbd,
    readonly conf: string,
    private readonly handle: ClusterHandle,
  ) {}

  /** Connects off the event loop; fails within the timeout when no monitor answers. */
  static async connect(conf: string, opts: CephConnectOptions = {}): Promise<CephCluster> {
    const rbd = nativeRbd();
    const t = opts.timeoutSeconds ?? CEPH_CONNECT_TIMEOUT_S;
    const handle = await new Promise<ClusterHandle>((resolve, reject) =>
      rbd.connect(conf, t, opts.osdTimeoutSeconds ?? CEPH_OSD_TIMEOUT_S, (err, c) =>
        err < 0 || !c ? reject(connectError(rbd, conf, err, t)) : resolve(c),
      ),
    );
    return new CephCluster(rbd, conf, handle);
  }

  /** The same on the calling thread (opening a site's pools at start-up). */
  static connectSync(conf: string, opts: CephConnectOptions = {}): CephCluster {
    const rbd = nativeRbd();
    const t = opts.timeoutSeconds ?? CEPH_CONNECT_TIMEOUT_S;
    const r = rbd.connectSync(conf, t, opts.osdTimeoutSeconds ?? CEPH_OSD_TIMEOUT_S);
    if (typeof r === 'number') throw connectError(rbd, conf, r, t);
    return new CephCluster(rbd, conf, r);
  }

  /** The I/O context of a Ceph pool (NOT_FOUND naming it when the cluster has no such pool). */
  ioctx(pool: string): IoctxHandle {
    this.open();
    let io = this.ioctxs.get(pool);
    if (!io) {
      const r = this.rbd.ioctx(this.handle, pool);
      if (typeof r === 'number')
        throw r === -2
          ? new HavenError('NOT_FOUND', `the Ceph cluster of ${this.conf} has no pool ${pool}`)
          : rbdError(this.rbd, r, `Ceph pool ${pool}`);
      io = r;
      this.ioctxs.set(pool, io);
    }
    return io;
  }

  /** A monitor command (JSON in, JSON out); throws naming the command when it fails. */
  monCommand(cmd: Record<string, unknown>): unknown {
    this.open();
    const [r, out, status] = this.rbd.monCommand(this.handle, JSON.stringify({ ...cmd, format: 'json' }));
    if (r < 0)
      throw rbdError(this.rbd, r, `ceph ${String(cmd.prefix)}${status ? ` (${status.trim()})` : ''}`);
    return out ? (JSON.parse(out) as unknown) : undefined;
  }

  /** How many copies the Ceph pool keeps of each object (`ceph osd pool get POOL size`). */
  replicas(pool: string): number {
    const out = this.monCommand({ prefix: 'osd pool get', pool, var: 'size' }) as { size?: unknown };
    if (typeof out?.size !== 'number')
      throw new HavenError('PROTOCOL', `ceph osd pool get ${pool} size: no size`);
    return out.size;
  }

  /** Raw capacity of the cluster in bytes: [total, used, available]. */
  stat(): { totalBytes: number; usedBytes: number; availableBytes: number } {
    this.open();
    const [kb, used, avail] = check(this.rbd, this.rbd.clusterStat(this.handle), 'ceph cluster stat');
    return { totalBytes: kb * 1024, usedBytes: used * 1024, availableBytes: avail * 1024 };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const io of this.ioctxs.values()) this.rbd.ioctxDestroy(io);
    this.ioctxs.clear();
    this.rbd.shutdown(this.handle);
  }

  private open(): void {
    if (this.closed)
      throw new HavenError('CONFLICT', `the connection to the Ceph cluster of ${this.conf} is closed`);
  }
}

function connectError(rbd: NativeRbd, conf: string, errno: number, timeout: number): HavenError {
  const e = Math.abs(errno);
  if (e === 2)
    return invalidArgument(
      `cannot connect to Ceph: the configuration ${conf} cannot be read (or names no monitor): ${rbd.strerror(e)}`,
    );
  if (e === 110)
    return new HavenError(
      'TIMEOUT',
      `cannot connect to Ceph with ${conf}: no monitor answered within ${timeout} s (${rbd.strerror(e)})`,
    );
  return rbdError(rbd, errno, `cannot connect to Ceph with ${conf}`, 'IO');
}
