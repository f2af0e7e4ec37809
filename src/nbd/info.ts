import { HavenError } from '../common/index.js';
import { walkExtents, type Extent } from '../block/index.js';
import { connectNbd, parseNbdUri, type NbdExportInfo, type TlsCredentials } from './client/index.js';
import * as P from './protocol.js';

/**
 * `haven nbd info URI`: what an NBD server says about an export — size, transmission flags,
 * block sizes, meta contexts (selected and available), the export list — and optionally the
 * map of one meta context (base:allocation by default, or qemu:dirty-bitmap:NAME).
 */
export interface NbdInfoOptions {
  tls?: TlsCredentials;
  /** Also list the server's exports (OPT_LIST). */
  list?: boolean;
  /** Map a context over the whole export: true for base:allocation, or a context name. */
  map?: boolean | string;
}

export interface MapEntry extends Extent {
  description: string;
}

export interface NbdInfoResult extends NbdExportInfo {
  map?: { context: string; extents: MapEntry[] };
}

export async function nbdInfo(uri: string, opts: NbdInfoOptions = {}): Promise<NbdInfoResult> {
  const u = parseNbdUri(uri);
  const context = opts.map === true ? P.CONTEXT_BASE_ALLOCATION : opts.map || undefined;
  let bitmap: string | undefined;
  if (context && context !== P.CONTEXT_BASE_ALLOCATION) {
    if (!context.startsWith(P.CONTEXT_DIRTY_BITMAP_PREFIX))
      throw new HavenError(
        'UNSUPPORTED',
        `cannot map meta context '${context}' (only base:allocation and qemu:dirty-bitmap:NAME)`,
      );
    bitmap = context.slice(P.CONTEXT_DIRTY_BITMAP_PREFIX.length);
  }
  const dev = await connectNbd(u, {
    tls: opts.tls,
    bitmap,
    list: opts.list,
    listContexts: true,
    readOnly: true,
  });
  try {
    const result: NbdInfoResult = { ...dev.info };
    if (context) {
      const extents: MapEntry[] = [];
      const status = bitmap
        ? (o: number, l: number) => dev.dirtyStatus(o, l)
        : (o: number, l: number) => dev.blockStatus(o, l);
      for await (const e of walkExtents(status, dev.size)) {
        const last = extents.at(-1);
        if (last && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
        else extents.push({ ...e, description: describe(e.flags, !!bitmap) });
      }
      result.map = { context, extents };
    }
    return result;
  } finally {
    await dev.close();
  }
}

function describe(flags: number, dirty: boolean): string {
  if (dirty) return flags & P.STATE_DIRTY ? 'dirty' : 'clean';
  const hole = (flags & P.STATE_HOLE) !== 0;
  const zero = (flags & P.STATE_ZERO) !== 0;
  return hole && zero ? 'hole,zero' : hole ? 'hole' : zero ? 'zero' : 'data';
}

/** The human form of an info result (as `nbdinfo` lays it out). */
export function formatNbdInfo(r: NbdInfoResult): string {
  const lines: string[] = [];
  if (r.exports) {
    lines.push(`exports: ${r.exports.length}`);
    for (const e of r.exports)
      lines.push(`  ${JSON.stringify(e.name)}${e.description ? ` — ${e.description}` : ''}`);
  }
  lines.push(`export: ${JSON.stringify(r.exportName)}`);
  lines.push(`  uri: ${r.uri}`);
  lines.push(`  size: ${r.size} (${human(r.size)})`);
  if (r.description) lines.push(`  description: ${r.description}`);
  lines.push(`  tls: ${r.tls}`);
  lines.push(`  structured replies: ${r.structured}`);
  lines.push(`  flags: 0x${r.flags.toString(16)} ${r.flagNames.join(' ')}`);
  lines.push(
    `  block sizes: minimum ${r.blockSizes.minimum}, preferred ${r.blockSizes.preferred}, maximum ${r.blockSizes.maximum}` +
      (r.blockSizesAdvertised ? '' : ' (not advertised; defaults)'),
  );
  if (r.availableContexts) {
    lines.push('  contexts:');
    for (const c of r.availableContexts) lines.push(`    ${c}`);
  }
  if (r.map) {
    lines.push(`map of ${r.map.context}:`);
    for (const e of r.map.extents)
      lines.push(
        `${String(e.offset).padStart(14)} ${String(e.length).padStart(14)} ${String(e.flags).padStart(3)}  ${e.description}`,
      );
  }
  return lines.join('\n');
}

export function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}
