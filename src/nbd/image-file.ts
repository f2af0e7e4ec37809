import { spawn } from 'node:child_process';
import { statSync, type Stats } from 'node:fs';
import { resolve } from 'node:path';
import { HavenError, invalidArgument, notFound } from '../common/index.js';

/** The image formats Haven reads through qemu (besides raw, read directly). */
export const IMAGE_FORMATS = new Set(['raw', 'qcow2', 'vmdk', 'vhdx', 'vpc', 'vdi']);

/** Formats whose headers can name a backing file (the others have no such field). */
export const BACKING_FORMATS = new Set(['qcow2', 'vmdk']);

/** qemu-img info or check on a file that never answers (an extent that is a FIFO) gives up. */
const QEMU_IMG_TIMEOUT_MS = 60_000;

export interface ImageInfo {
  format: string;
  virtualSize: number;
}

/** An image file Haven is about to read, inspected. */
export interface InspectedImage extends ImageInfo {
  path: string;
  /**
   * The format was probed from the file's content (none was given): the content may be a guest's,
   * so the image is opened with its backing file disabled (see startQemuNbd).
   */
  probed: boolean;
}

/**
 * Inspects an image file before Haven reads it (a backup source, a volume import). How far its
 * content is trusted depends on who named the format:
 *
 * - **an explicit format** (`--format`): the operator says what the file is; qemu opens it as
 *   that format and nothing is probed. A qcow2's backing file is followed, being part of its disk.
 * - **no format**: it is probed from the content, which may be a guest's — a raw disk whose
 *   first sector a guest wrote as a qcow2 header with `backing_file=/etc/shadow`. A probed image
 *   that names any other file (a backing file, a qcow2 external data file, a VMDK's extents) is
 *   refused, so that no guest-written header makes Haven read a host file.
 *
 * Either way the file must be a regular file or a block device (a FIFO would hang the reader),
 * and an image that `qemu-img check` finds corrupt (truncated, damaged metadata — it would read
 * as zeroes) is refused, naming what is wrong.
 */
export async function inspectImage(path: string, format?: string): Promise<InspectedImage> {
  const file = resolve(path);
  checkReadable(file);
  if (format !== undefined && !IMAGE_FORMATS.has(format))
    throw invalidArgument(
      `image format "${format}" is not one Haven reads (${[...IMAGE_FORMATS].join(', ')})`,
    );
  const info = await qemuImgJson<QemuImgInfo>(
    ['info', '--output=json', '-U', ...(format ? ['-f', format] : [])],
    file,
  );
  const fmt = info.format;
  if (!IMAGE_FORMATS.has(fmt))
    throw invalidArgument(
      `image ${file} is ${fmt}, not a format Haven reads (${[...IMAGE_FORMATS].join(', ')}); give --format raw to read its bytes as they are`,
    );
  if (format === undefined && fmt !== 'raw') {
    const named = namedFiles(info, file);
    if (named.length)
      throw invalidArgument(
        `image ${file} was probed as ${fmt}, and its header names ${named.join(', ')}. Haven does not follow files named inside an image whose format it had to guess: a guest can write such a header into a raw disk to read host files. Give --format raw to read ${file} as it is, or --format ${fmt} if you trust that header`,
      );
  }
  if (fmt !== 'raw') await checkImage(file, fmt);
  return { path: file, format: fmt, virtualSize: info['virtual-size'], probed: format === undefined };
}

/** The format and virtual size qemu-img sees (probed unless `format` is given; files named inside are not opened). */
export async function imageInfo(path: string, format?: string): Promise<ImageInfo> {
  const file = resolve(path);
  checkReadable(file);
  const j = await qemuImgJson<QemuImgInfo>(
    ['info', '--output=json', '-U', ...(format ? ['-f', format] : [])],
    file,
  );
  return { format: j.format, virtualSize: j['virtual-size'] };
}

interface QemuImgInfo {
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'format-specific'?: {
    type?: string;
    data?: { 'data-file'?: string; extents?: { filename?: string }[] };
  };
}

interface QemuImgCheck {
  corruptions?: number;
  leaks?: number;
  'check-errors'?: number;
}

/** The other files an image's header names: what qemu would open to read it. */
function namedFiles(info: QemuImgInfo, self: string): string[] {
  const out: string[] = [];
  const backing = info['full-backing-filename'] ?? info['backing-filename'];
  if (backing) out.push(`the backing file ${backing}`);
  const data = info['format-specific']?.data;
  if (data?.['data-file']) out.push(`the data file ${data['data-file']}`);
  for (const e of data?.extents ?? [])
    if (e.filename && resolve(e.filename) !== self) out.push(`the extent ${e.filename}`);
  return [...new Set(out)];
}

/** `qemu-img check`: corruptions and check errors fail; leaked clusters (harmless) do not. */
async function checkImage(file: string, format: string): Promise<void> {
  const r = await qemuImg(['check', '--output=json', '-U', '-f', format, file]);
  // 0: clean; 3: leaks only; 63: the format has no check.
  if (r.status === 0 || r.status === 3 || r.status === 63) return;
  let j: QemuImgCheck = {};
  try {
    j = JSON.parse(r.stdout) as QemuImgCheck;
  } catch {
    // no report: say what qemu-img said
  }
  const first = r.stderr
    .split('\n')
    .find((l) => l.trim())
    ?.trim();
  const what =
    j.corruptions || j['check-errors']
      ? [
          j.corruptions ? `${j.corruptions} corruption(s)` : '',
          j['check-errors'] ? `${j['check-errors']} error(s) while checking` : '',
        ]
          .filter(Boolean)
          .join(' and ')
      : r.error
        ? r.error.message
        : `exit status ${r.status ?? r.signal}`;
  throw new HavenError(
    'CORRUPT',
    `image ${file} (${format}) is damaged: qemu-img check found ${what}${first ? ` (${first})` : ''}; nothing was read. Repair a copy with qemu-img check -r all, or use a good copy of the image`,
  );
}

async function qemuImgJson<T>(args: string[], file: string): Promise<T> {
  const r = await qemuImg([...args, file]);
  if (r.status !== 0) {
    const msg = r.stderr.trim() || r.error?.message || `exit status ${r.status ?? r.signal}`;
    throw invalidArgument(`cannot read image ${file}: ${msg}`);
  }
  return JSON.parse(r.stdout) as T;
}

interface Ran {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  error?: Error;
}

/**
 * Runs qemu-img beside the event loop (a site daemon serves VM disks meanwhile; a check of a large
 * image takes seconds), killed after QEMU_IMG_TIMEOUT_MS.
 */
function qemuImg(args: string[]): Promise<Ran> {
  return new Promise((done) => {
    const p = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let error: Error | undefined;
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      error = new Error(`qemu-img ${args[0]} gave no answer in ${QEMU_IMG_TIMEOUT_MS / 1000} s`);
      p.kill('SIGKILL');
    }, QEMU_IMG_TIMEOUT_MS);
    p.on('error', (e) => (error = e));
    p.on('close', (status, signal) => {
      clearTimeout(timer);
      done({ status, signal, stdout, stderr, ...(error ? { error } : {}) });
    });
  });
}

/** Only regular files and block devices: opening a FIFO waits for a writer for ever. */
export function checkReadable(file: string): Stats {
  let st: Stats;
  try {
    st = statSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`image ${file} does not exist`);
    throw invalidArgument(`cannot read image ${file}: ${(err as Error).message}`);
  }
  if (!st.isFile() && !st.isBlockDevice())
    throw invalidArgument(
      `${file} is ${st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : st.isCharacterDevice() ? 'a character device' : 'not a regular file'}: Haven reads images only from regular files and block devices`,
    );
  return st;
}
