import { resolve } from 'node:path';
import { HavenError, conflict, invalidArgument, outputTarget } from '../../common/index.js';
import { checkReadable } from '../../nbd/index.js';
import {
  checkName,
  exportVolume,
  importVolume,
  type BitmapInfo,
  type CapabilitySet,
  type PoolInfo,
  type SnapshotInfo,
  type VolumeInfo,
} from '../../storage/index.js';
import { existsSync } from 'node:fs';
import { SiteDomain, type Actor } from './domain.js';
import { parseCapabilities as parseCapabilitiesOrThrow } from './pool-capabilities.js';
import type { Job } from './jobs.js';

export type PoolAnswer = PoolInfo & { advertised?: CapabilitySet };

/** Pools, volumes, snapshots, bitmaps, import, export and moves of a site's volumes. */
export class SiteVolumes extends SiteDomain {
  listPools(): PoolAnswer[] {
    return this.storage.listPools().map((p) => this.withAdvertised(p));
  }

  pool(name: string): PoolAnswer {
    return this.withAdvertised(this.storage.poolInfo(name));
  }

  /** A pool with everything it advertises to policies (its provider's and the declared). */
  private withAdvertised(p: PoolInfo): PoolAnswer {
    return this.policy ? { ...p, advertised: this.policy.advertised(p.name) } : p;
  }

  createPool(
    actor: Actor,
    name: string,
    opts: { path?: string; tier?: string; capacityBytes?: number; capabilities?: string[] },
  ): PoolAnswer {
    return this.audited(actor, 'pool.create', name, () => {
      const { capabilities, ...rest } = opts;
      if (capabilities?.length) parseCapabilitiesOrThrow(capabilities); // before the pool exists
      const p = this.storage.createPool(name, rest);
      if (capabilities?.length) this.policy?.declare(name, capabilities);
      return this.withAdvertised(p);
    });
  }

  /**
   * Creates an RBD pool: its volumes are images in a Ceph pool, served by the site like any other
   * (decision 0022). Connects to the cluster first (bounded): nothing is recorded unless it
   * answered and holds the Ceph pool.
   */
  async createRbdPool(
    actor: Actor,
    name: string,
    opts: {
      cephConf: string;
      cephPool: string;
      imagePrefix?: string;
      path?: string;
      tier?: string;
      capacityBytes?: number;
      capabilities?: string[];
    },
  ): Promise<PoolAnswer> {
    return this.auditedAsync(
      actor,
      'pool.create',
      name,
      async () => {
        const { capabilities, cephConf, cephPool, imagePrefix, ...rest } = opts;
        if (capabilities?.length) parseCapabilitiesOrThrow(capabilities);
        await this.storage.createRbdPool(name, {
          conf: cephConf,
          cephPool,
          ...(imagePrefix !== undefined ? { prefix: imagePrefix } : {}),
          ...rest,
        });
        if (capabilities?.length) this.policy?.declare(name, capabilities);
        this.exports.refresh(); // images with the prefix are volumes already
        return this.pool(name);
      },
      () => `pool ${name} created: RBD images ${opts.imagePrefix ?? ''}* in Ceph pool ${opts.cephPool}`,
    );
  }

  /**
   * Registers a pool served by an out-of-process storage provider (HTTP, docs/provider-api.md):
   * stored only once the provider answered in a version this Haven speaks and accepted the token.
   */
  async registerPool(
    actor: Actor,
    name: string,
    opts: { providerUrl: string; tokenFile: string; capabilities?: string[] },
  ): Promise<PoolAnswer> {
    const reg = this.providerPools;
    if (!reg) throw new HavenError('UNSUPPORTED', 'this site has no provider pools');
    return this.auditedAsync(
      actor,
      'pool.register',
      name,
      async () => {
        if (opts.capabilities?.length) parseCapabilitiesOrThrow(opts.capabilities);
        await reg.register(name, { url: opts.providerUrl, tokenFile: opts.tokenFile });
        if (opts.capabilities?.length) this.policy?.declare(name, opts.capabilities);
        this.exports.refresh(); // the volumes it holds already
        return this.pool(name);
      },
      (p) => `pool ${name} registered: storage provider ${p.path}`,
    );
  }

  /** Replaces the capabilities an operator declares for a pool (what Haven cannot see itself). */
  setPoolCapabilities(actor: Actor, name: string, capabilities: string[]): PoolAnswer {
    return this.audited(
      actor,
      'pool.set-capabilities',
      name,
      () => {
        this.storage.poolInfo(name);
        this.policy?.declare(name, capabilities);
        return this.pool(name);
      },
      () => `pool ${name} declares ${capabilities.join(', ') || 'no capabilities'}`,
    );
  }

  deletePool(actor: Actor, name: string): void {
    this.audited(actor, 'pool.delete', name, () => {
      if (this.providerPools?.isProviderPool(name)) this.providerPools.unregister(name);
      else this.storage.deletePool(name);
      this.policy?.forget(name);
    });
  }

  listVolumes(pool?: string): VolumeInfo[] {
    return this.storage.listVolumes(pool);
  }

  volume(name: string): VolumeInfo {
    return this.storage.volume(name);
  }

  /**
   * Creates a volume: on `pool`, or where its policy places it (`policy`, or the policy of the VM
   * it is `for`); a pool that does not satisfy the policy is refused with what it lacks.
   */
  createVolume(
    actor: Actor,
    name: string,
    sizeBytes: number,
    pool?: string,
    placement: { policy?: string; vm?: string } = {},
  ): Promise<VolumeInfo> {
    return this.auditedAsync(actor, 'volume.create', name, async () => {
      const where = this.placeVolume({ ...placement, ...(pool ? { pool } : {}) });
      // On a provider's pool, created through the contract (the provider's own O(1) or not).
      const v = await this.storage.provisionVolume(name, sizeBytes, where);
      if (placement.policy) this.policy?.adopt(actor, name, placement.policy);
      this.exports.refresh();
      return v;
    });
  }

  private placeVolume(req: { pool?: string; policy?: string; vm?: string; needBytes?: number }): string {
    if (!this.policy) return req.pool ?? 'default';
    return this.policy.place(req);
  }

  resizeVolume(actor: Actor, name: string, sizeBytes: number): VolumeInfo {
    return this.audited(actor, 'volume.resize', name, () => {
      this.refuseIfRunning(name, 'resize');
      this.refuseIfReplicated('volume', name);
      return this.storage.resizeVolume(name, sizeBytes);
    });
  }

  async deleteVolume(actor: Actor, name: string): Promise<void> {
    await this.auditedAsync(actor, 'volume.delete', name, async () => {
      this.storage.volume(name);
      this.refuseIfReplicated('volume', name);
      const users = this.compute.usersOf(name);
      if (users.length)
        throw conflict(
          `volume ${name} is a disk of VM(s) ${users.map((u) => u.name).join(', ')}; delete or change them first`,
        );
      const clients = this.exports.clientsOf(name);
      if (clients) throw conflict(`volume ${name} is in use by ${clients} NBD client(s)`);
      if (this.jobs.list({ state: 'running', target: name }).length)
        throw conflict(`volume ${name} has a job running`);
      this.exports.withdraw(name);
      await this.storage.removeVolume(name); // a provider's through the contract
      this.policy?.forgetObject('volume', name);
    });
  }

  async cloneVolume(actor: Actor, source: string, snapshot: string, name: string): Promise<VolumeInfo> {
    return this.auditedAsync(actor, 'volume.clone', name, async () => {
      const v = await this.storage.cloneSnapshot(source, snapshot, name);
      this.exports.refresh();
      return v;
    });
  }

  /** Imports an image file of this host into a new volume, as a job. */
  importVolume(
    actor: Actor,
    opts: { image: string; name: string; pool?: string; format?: string; policy?: string },
  ): Job {
    checkName('volume', opts.name);
    if (this.storage.listVolumes().some((v) => v.name === opts.name))
      throw conflict(`volume ${opts.name} already exists`);
    if (!existsSync(opts.image)) throw invalidArgument(`image ${opts.image} does not exist on this site`);
    checkReadable(opts.image); // a FIFO or a directory is refused now, not by the job
    const pool = this.placeVolume({
      ...(opts.pool ? { pool: opts.pool } : {}),
      ...(opts.policy ? { policy: opts.policy } : {}),
    });
    this.storage.pool(pool);
    return this.jobs.start({ kind: 'volume.import', target: opts.name, actor }, async (ctx) => {
      ctx.log(`importing ${opts.image} into pool ${pool}`);
      const r = await importVolume(this.storage, {
        image: opts.image,
        name: opts.name,
        pool,
        ...(opts.format ? { format: opts.format } : {}),
        signal: ctx.signal,
        onProgress: (p) => ctx.progress(p.done, p.total, p.phase),
      });
      if (opts.policy) this.policy?.adopt(actor, opts.name, opts.policy);
      this.exports.refresh();
      ctx.log(`copied ${r.copy.dataBytes} data bytes, ${r.copy.zeroBytes} zero bytes; verified`);
      return {
        volume: r.volume,
        digest: r.copy.digest,
        dataBytes: r.copy.dataBytes,
        zeroBytes: r.copy.zeroBytes,
      };
    });
  }

  /**
   * Exports a volume or "volume@snapshot" to an image file on this host, as a job. An existing
   * file is replaced only with `force` (the daemon runs as root: a mistyped path must not cost a
   * host file); that is checked now, so the request fails rather than its job.
   */
  exportVolume(actor: Actor, opts: { source: string; image: string; format?: string; force?: boolean }): Job {
    outputTarget(resolve(opts.image), opts.force);
    this.storage.volume(opts.source.split('@')[0]!);
    return this.jobs.start({ kind: 'volume.export', target: opts.source, actor }, async (ctx) => {
      const r = await exportVolume(this.storage, {
        ...opts,
        signal: ctx.signal,
        onProgress: (p) => ctx.progress(p.done, p.total, p.phase),
      });
      return { image: opts.image, digest: r.digest, dataBytes: r.dataBytes };
    });
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    return this.storage.listSnapshots(volume);
  }

  /** Takes a snapshot, as a job (O(1) in the volume format, even while a VM writes). */
  createSnapshot(actor: Actor, volume: string, name: string, bitmap?: string): Job {
    this.storage.volume(volume);
    checkName('snapshot', name);
    if (this.storage.listSnapshots(volume).some((s) => s.name === name))
      throw conflict(`volume ${volume} already has a snapshot ${name}`);
    return this.jobs.start({ kind: 'snapshot.create', target: `${volume}@${name}`, actor }, async (ctx) => {
      // QEMU's NBD client has no cache of its own: every write the guest saw completed is in
      // the volume already, so the snapshot is crash-consistent without pausing the VM.
      ctx.progress(0, 1, 'snapshot');
      // On a provider's pool: flushed to the provider, then taken by it (the contract).
      const s = bitmap
        ? this.storage.checkpoint(volume, name, bitmap).snapshot
        : await this.storage.takeSnapshot(volume, name);
      this.exports.refresh();
      return s;
    });
  }

  async deleteSnapshot(actor: Actor, volume: string, name: string): Promise<void> {
    await this.auditedAsync(actor, 'snapshot.delete', `${volume}@${name}`, async () => {
      const clients = this.exports.clientsOf(`${volume}@${name}`);
      if (clients) throw conflict(`snapshot ${volume}@${name} is in use by ${clients} NBD client(s)`);
      if (!this.storage.listSnapshots(volume).some((s) => s.name === name))
        throw new HavenError('NOT_FOUND', `volume ${volume} has no snapshot ${name}`);
      this.exports.withdraw(`${volume}@${name}`);
      await this.storage.removeSnapshot(volume, name);
    });
  }

  revertSnapshot(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'snapshot.revert', `${volume}@${name}`, () => {
      this.refuseIfRunning(volume, 'revert');
      this.refuseIfReplicated('volume', volume);
      this.storage.revert(volume, name);
    });
  }

  listBitmaps(volume: string): BitmapInfo[] {
    return this.storage.listBitmaps(volume);
  }

  /** Starts tracking a volume's changes; its NBD exports offer the bitmap at once. */
  addBitmap(actor: Actor, volume: string, name: string, granularity?: number): BitmapInfo {
    return this.audited(actor, 'bitmap.add', `${volume}#${name}`, () => {
      const b = this.storage.addBitmap(volume, name, granularity);
      this.exports.refresh();
      return b;
    });
  }

  removeBitmap(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'bitmap.remove', `${volume}#${name}`, () => {
      this.storage.removeBitmap(volume, name);
      this.exports.refresh();
    });
  }

  /** Marks everything clean (and trusted again). */
  clearBitmap(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'bitmap.clear', `${volume}#${name}`, () => this.storage.clearBitmap(volume, name));
  }

  /**
   * Live storage migration of volumes to another pool, as a job: a volume's VM and NBD clients
   * go on while it moves, and see a short pause at the switch (logged). Volumes move one by one.
   */
  moveVolume(actor: Actor, volume: string, pool: string, opts: { keepSource?: boolean } = {}): Job {
    return this.moveVolumes(actor, { volumes: [volume], pool, kind: 'volume.move', target: volume, ...opts });
  }

  /** Moves all of a VM's disks to another pool while it runs, as one job. */
  moveVmStorage(actor: Actor, vm: string, pool: string, opts: { keepSource?: boolean } = {}): Job {
    const v = this.compute.vm(vm);
    const volumes = v.disks.map((d) => d.volume);
    return this.moveVolumes(actor, { volumes, pool, kind: 'vm.move-storage', target: v.name, ...opts });
  }

  private moveVolumes(
    actor: Actor,
    req: {
      volumes: string[];
      pool: string;
      keepSource?: boolean;
      kind: 'volume.move' | 'vm.move-storage';
      target: string;
    },
  ): Job {
    this.storage.pool(req.pool);
    for (const v of req.volumes) {
      this.storage.volume(v);
      const backups = this.jobs
        .list({ state: 'running' })
        .filter(
          (j) =>
            j.kind.endsWith('.backup') &&
            (j.target === v || this.compute.usersOf(v).some((u) => u.name === j.target)),
        );
      if (backups.length)
        throw conflict(`volume ${v} is being backed up (job ${backups[0]!.id}); move it afterwards`);
    }
    return this.jobs.start({ kind: req.kind, target: req.target, actor }, async (ctx) => {
      const results = [];
      for (const v of req.volumes) {
        // Its backup checkpoints are dropped by the move: their exports go first.
        for (const snap of this.storage.listSnapshots(v)) this.exports.withdraw(`${v}@${snap.name}`);
        ctx.log(`moving volume ${v} to pool ${req.pool}`);
        const r = await this.storage.moveVolume(v, req.pool, {
          signal: ctx.signal,
          onProgress: (d, t) => ctx.progress(d, t, `copying ${v}`),
          ...(req.keepSource ? { keepSource: true } : {}),
        });
        ctx.log(
          `volume ${v} is on pool ${r.to}: copied ${r.copiedBytes} bytes, mirrored ${r.mirroredBytes} bytes of writes, I/O paused ${r.pauseMs.toFixed(1)} ms at the switch`,
        );
        results.push(r);
        this.exports.refresh();
      }
      return { volumes: results };
    });
  }
}
