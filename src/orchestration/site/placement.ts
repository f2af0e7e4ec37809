import { HavenError } from '../../common/index.js';
import type { CapabilitySet } from '../../storage/index.js';
import { parseRequirement } from './policy-spec.js';

/** A pool as placement sees it. */
export interface PlacementPool {
  name: string;
  capabilities: CapabilitySet;
  freeBytes: number;
}

/** The requirements of `requires` that `caps` does not meet, as readable reasons. */
export function missingCapabilities(caps: CapabilitySet, requires: string[]): string[] {
  const missing: string[] = [];
  for (const r of requires) {
    const [name, value] = parseRequirement(r);
    const have = caps[name];
    if (have === undefined) missing.push(name);
    else if (value !== true && have !== value)
      missing.push(`${name}=${value} (it has ${name}=${have === true ? 'yes' : have})`);
  }
  return missing;
}

/**
 * Where a new volume of `needBytes` goes under a policy: the named pool if it satisfies every
 * requirement (else refused, naming what it lacks), or else the satisfying pool with the most free
 * space (ties: by name). Refused when none does, naming each pool and what it lacks. Pure.
 */
export function choosePool(
  pools: PlacementPool[],
  requires: string[],
  opts: { policy: string; pool?: string; needBytes?: number },
): string {
  if (opts.pool) {
    const p = pools.find((x) => x.name === opts.pool);
    if (!p) throw new HavenError('NOT_FOUND', `no pool ${opts.pool}`);
    const missing = missingCapabilities(p.capabilities, requires);
    if (missing.length)
      throw new HavenError(
        'CONFLICT',
        `pool ${p.name} does not satisfy policy ${opts.policy}: it lacks ${missing.join(', ')}`,
      );
    return p.name;
  }
  const fits = pools
    .filter((p) => missingCapabilities(p.capabilities, requires).length === 0)
    .filter((p) => (opts.needBytes ?? 0) <= p.freeBytes)
    .sort((a, b) => b.freeBytes - a.freeBytes || a.name.localeCompare(b.name));
  if (fits[0]) return fits[0].name;
  const why = pools.map((p) => {
    const m = missingCapabilities(p.capabilities, requires);
    return m.length ? `${p.name} lacks ${m.join(', ')}` : `${p.name} has only ${p.freeBytes} bytes free`;
  });
  throw new HavenError(
    'CONFLICT',
    `no pool satisfies policy ${opts.policy} (${requires.join(', ') || 'no requirements'}): ${why.join('; ') || 'there are no pools'}`,
  );
}
