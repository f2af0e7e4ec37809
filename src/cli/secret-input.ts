import { readFileSync } from 'node:fs';
import { HavenError, invalidArgument } from '../common/index.js';

/**
 * A password for a command: from a file (its first line), else from stdin when that is not a
 * terminal (a pipe: its first line), else typed at the terminal without echo (twice, when
 * `confirm`). Never from an option's value, which other users could see in the process list.
 */
export async function readPassword(opts: { file?: string; what: string; confirm: boolean }): Promise<string> {
  if (opts.file !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new HavenError(
        'NOT_FOUND',
        `cannot read the ${opts.what} file ${opts.file}: ${(err as Error).message}`,
      );
    }
    return firstLine(text, `the ${opts.what} file ${opts.file}`);
  }
  if (!process.stdin.isTTY) return firstLine(await readStdin(), `the ${opts.what} on stdin`);
  const typed = await promptHidden(`${capitalised(opts.what)}: `);
  if (opts.confirm && (await promptHidden(`${capitalised(opts.what)} again: `)) !== typed)
    throw invalidArgument(`the two ${opts.what}s typed differ`);
  return typed;
}

const capitalised = (s: string) => s[0]!.toUpperCase() + s.slice(1);

function firstLine(text: string, where: string): string {
  const line = text.split(/\r?\n/)[0]!;
  if (!line) throw invalidArgument(`${where} is empty`);
  return line;
}

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of process.stdin as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts).toString('utf8');
}

/** Reads a line from the terminal in raw mode, echoing nothing. */
function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.setEncoding('utf8');
  stdin.resume();
  return new Promise((resolve, reject) => {
    let typed = '';
    const finish = () => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
    };
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') {
          finish();
          return resolve(typed);
        }
        if (ch === '\u0003') {
          finish();
          return reject(new HavenError('CANCELLED', 'cancelled'));
        }
        typed = ch === '\u007f' || ch === '\b' ? typed.slice(0, -1) : typed + ch;
      }
    };
    stdin.on('data', onData);
  });
}
