/**
 * The fix for the common failures, added to the error line the CLI prints: the layers below name
 * the object ("no volume v1"), and only the CLI knows which command shows what there is. The
 * connection (which API, whose token) is recorded by `connect` so an authentication or network
 * failure can say where the token and address came from.
 */

let connection: { url: string; tokenFrom: string } | undefined;

export function noteConnection(url: string, tokenFrom: string): void {
  connection = { url, tokenFrom };
}

const q = (s: string) => (/^[\w@.:/-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

const HINTS: [RegExp, (m: RegExpMatchArray) => string][] = [
  [/^no volume (\S+)( in pool \S+)?$/, () => 'see "haven volume list"'],
  [/^no VM (\S+)$/, () => 'see "haven vm list"'],
  [/^no pool (\S+)$/, (m) => `see "haven pool list", or create it with "haven pool create ${q(m[1]!)}"`],
  [/^volume (\S+) has no snapshot \S+$/, (m) => `see "haven snapshot list ${q(m[1]!)}"`],
  [/^no snapshot \S+ in repository (.+)$/, (m) => `see "haven repo list --repo ${q(m[1]!)}"`],
  [/^no job \S+$/, () => 'see "haven job list"'],
  [/^no network \S+$/, () => 'see "haven network list"'],
  [/^no host \S+$/, () => 'see "haven host list"'],
  [/^no bitmap \S+$/, () => 'see "haven bitmap list VOLUME"'],
  [/^VM (\S+) is not running from a backup$/, () => 'see "haven recover list"'],
];

/** The message with its fix appended, when there is a known one and it does not say one already. */
export function withHint(code: string | undefined, message: string): string {
  if (code === 'NOT_FOUND')
    for (const [re, hint] of HINTS) {
      const m = re.exec(message);
      if (m) return `${message}: ${hint(m)}`;
    }
  if (code === 'UNAUTHENTICATED' && connection && /API token/.test(message))
    return `${message} for ${connection.url} (token from ${connection.tokenFrom}): give the site's token, DATA/api-token of its data directory, or a user's ("haven user token create"), with --token-file FILE or $HAVEN_TOKEN_FILE`;
  if (code === 'IO' && connection && /cannot reach the Haven site API/.test(message))
    return `${message}: is its daemon running ("haven serve")? Otherwise check --api, $HAVEN_API or the config file`;
  return message;
}
