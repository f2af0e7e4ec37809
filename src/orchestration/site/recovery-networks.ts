import { invalidArgument } from '../../common/index.js';

/**
 * Where a recovered VM's NICs go, as `--network` states it (a pure function of the backed-up NICs
 * and the site's networks, so it is tested without a VM):
 * - absent: on the backed-up VM's own networks, those this site has (the rest left out);
 * - `none`: no NIC at all;
 * - `NAME`: every NIC on network NAME;
 * - `OLD=NEW,…`: each NIC on network OLD on NEW (`OLD=none` drops those NICs); every network
 *   of the backed-up VM must be named, so that no NIC lands by default beside the original.
 */
export function recoveredNics(
  original: readonly { network: string }[],
  spec: string | undefined,
  siteNetworks: readonly string[],
): { nics: { network: string }[]; leftOut: string[] } {
  const known = new Set(siteNetworks);
  if (spec === undefined) {
    const nics = original.filter((n) => known.has(n.network));
    return { nics, leftOut: original.filter((n) => !known.has(n.network)).map((n) => n.network) };
  }
  const s = spec.trim();
  if (s === 'none') return { nics: [], leftOut: [] };
  const need = (name: string) => {
    if (!known.has(name))
      throw invalidArgument(
        `network ${name} does not exist on this site: create it (haven network create ${name} --kind isolated) or use --network none`,
      );
  };
  if (!s.includes('=')) {
    need(s);
    return { nics: original.map(() => ({ network: s })), leftOut: [] };
  }
  const map = new Map<string, string>();
  for (const pair of s.split(',')) {
    const m = /^\s*([^=\s]+)\s*=\s*([^=\s]+)\s*$/.exec(pair);
    if (!m) throw invalidArgument(`--network mapping "${pair}" is not OLD=NEW (e.g. prod=lab,backnet=none)`);
    if (map.has(m[1]!)) throw invalidArgument(`--network maps network ${m[1]} twice`);
    if (m[2] !== 'none') need(m[2]!);
    map.set(m[1]!, m[2]!);
  }
  const had = new Set(original.map((n) => n.network));
  for (const from of map.keys())
    if (!had.has(from))
      throw invalidArgument(
        `--network maps network ${from}, but the backed-up VM has no NIC on it (it has: ${[...had].join(', ') || 'none'})`,
      );
  for (const n of had)
    if (!map.has(n))
      throw invalidArgument(
        `--network does not say where the NIC on network ${n} goes: add ${n}=NEW or ${n}=none`,
      );
  return {
    nics: original
      .filter((n) => map.get(n.network) !== 'none')
      .map((n) => ({ network: map.get(n.network)! })),
    leftOut: [],
  };
}
