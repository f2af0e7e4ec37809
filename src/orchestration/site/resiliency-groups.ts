import { conflict, invalidArgument, notFound } from '../../common/index.js';
import { checkName } from '../../storage/index.js';
import { now, type Db } from './database.js';

/**
 * A resiliency group: VMs protected and recovered together. Replicated, it is one consistency
 * group (every disk of its VMs in one ordered stream, docs/decisions/0016); a VM is in at most one
 * group (the table's key says so), in the order the operator gave (the start order inside a tier).
 */
export interface ResiliencyGroupRow {
  name: string;
  description?: string;
  vms: string[];
  createdAt: string;
  updatedAt: string;
}

interface Row {
  name: string;
  description: string | null;
  created_at: string;
  updated_at: string;
}

/** The resiliency groups defined at this site (tables resiliency_groups, resiliency_group_vms). */
export class ResiliencyGroupStore {
  constructor(private readonly db: Db) {}

  list(): ResiliencyGroupRow[] {
    const rows = this.db.prepare('SELECT * FROM resiliency_groups ORDER BY name').all() as Row[];
    return rows.map((r) => this.fromRow(r));
  }

  find(name: string): ResiliencyGroupRow | undefined {
    const r = this.db.prepare('SELECT * FROM resiliency_groups WHERE name = ?').get(name) as Row | undefined;
    return r && this.fromRow(r);
  }

  get(name: string): ResiliencyGroupRow {
    const g = this.find(name);
    if (!g) throw notFound(`group ${name} does not exist on this site (haven group list)`);
    return g;
  }

  /** The group a VM is in, if any. */
  groupOfVm(vm: string): string | undefined {
    const r = this.db.prepare('SELECT grp FROM resiliency_group_vms WHERE vm = ?').get(vm) as
      { grp: string } | undefined;
    return r?.grp;
  }

  /** A new group; every VM checked before anything is stored. */
  create(name: string, vms: string[], description?: string): ResiliencyGroupRow {
    checkName('group', name);
    if (this.find(name)) throw conflict(`group ${name} exists already`);
    if (description !== undefined && description.length > 1024)
      throw invalidArgument('a group description is at most 1024 characters');
    const unique = this.checkJoining(name, vms);
    const t = now();
    this.db.transaction(() => {
      this.db
        .prepare(
          'INSERT INTO resiliency_groups (name, description, created_at, updated_at) VALUES (?, ?, ?, ?)',
        )
        .run(name, description ?? null, t, t);
      this.insertVms(name, unique, 0);
    })();
    return this.get(name);
  }

  /** VMs join a group, after its last VM. */
  add(name: string, vms: string[]): ResiliencyGroupRow {
    const g = this.get(name);
    if (!vms.length) throw invalidArgument(`name at least one VM to add to group ${name}`);
    const unique = this.checkJoining(name, vms);
    for (const vm of unique) if (g.vms.includes(vm)) throw conflict(`VM ${vm} is in group ${name} already`);
    const last = this.db
      .prepare('SELECT MAX(position) AS p FROM resiliency_group_vms WHERE grp = ?')
      .get(name) as { p: number | null };
    this.db.transaction(() => {
      this.insertVms(name, unique, (last.p ?? -1) + 1);
      this.touch(name);
    })();
    return this.get(name);
  }

  /** VMs leave a group; the group stays, even empty. */
  remove(name: string, vms: string[]): ResiliencyGroupRow {
    const g = this.get(name);
    for (const vm of vms) if (!g.vms.includes(vm)) throw notFound(`VM ${vm} is not in group ${name}`);
    this.db.transaction(() => {
      for (const vm of vms) this.db.prepare('DELETE FROM resiliency_group_vms WHERE vm = ?').run(vm);
      this.touch(name);
    })();
    return this.get(name);
  }

  delete(name: string): void {
    this.get(name);
    this.db.prepare('DELETE FROM resiliency_groups WHERE name = ?').run(name);
  }

  /** A VM that is deleted leaves its group. */
  forgetVm(vm: string): void {
    this.db.prepare('DELETE FROM resiliency_group_vms WHERE vm = ?').run(vm);
  }

  /** The VMs, each once, none in another group. */
  private checkJoining(name: string, vms: string[]): string[] {
    const unique = [...new Set(vms)];
    for (const vm of unique) {
      checkName('VM', vm);
      const other = this.groupOfVm(vm);
      if (other && other !== name)
        throw conflict(`VM ${vm} is in group ${other} already: a VM belongs to at most one group`);
    }
    return unique;
  }

  private insertVms(name: string, vms: string[], from: number): void {
    const ins = this.db.prepare('INSERT INTO resiliency_group_vms (vm, grp, position) VALUES (?, ?, ?)');
    vms.forEach((vm, i) => ins.run(vm, name, from + i));
  }

  private touch(name: string): void {
    this.db.prepare('UPDATE resiliency_groups SET updated_at = ? WHERE name = ?').run(now(), name);
  }

  private fromRow(r: Row): ResiliencyGroupRow {
    const vms = (
      this.db.prepare('SELECT vm FROM resiliency_group_vms WHERE grp = ? ORDER BY position').all(r.name) as {
        vm: string;
      }[]
    ).map((x) => x.vm);
    return {
      name: r.name,
      ...(r.description !== null ? { description: r.description } : {}),
      vms,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
    };
  }
}
