import type { Command } from 'commander';
import type { User, UserToken } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { table } from '../args.js';
import { printResult } from '../output.js';
import { readPassword } from '../secret-input.js';

type JsonOpts = ApiOpts & { json?: boolean };
const enc = encodeURIComponent;
const PASSWORD_HELP =
  'a file whose first line is the password (default: stdin when it is not a terminal, else asked for)';

/** `haven user add|list|show|passwd|role|delete` and `haven user token create|list|delete`. */
export function registerUser(program: Command): void {
  const user = program
    .command('user')
    .description(
      'users of the site (roles admin, operator, viewer) for the console and the API, and their API tokens (docs/users.md)',
    );

  apiOptions(user.command('add'))
    .description('add a user with a password')
    .argument('<name>')
    .requiredOption('--role <role>', 'admin, operator (runs operations) or viewer (reads)')
    .option('--password-file <file>', PASSWORD_HELP)
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { role: string; passwordFile?: string }) => {
      const c = connect(o);
      const password = await readPassword({ file: o.passwordFile, what: 'password', confirm: true });
      const u = await c.post<User>('/users', { name, role: o.role, password });
      printResult(!!o.json, u, () => `user ${u.name} added (${u.role})`);
    });

  apiOptions(user.command('list'))
    .description('the users and their roles')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const us = await connect(o).get<User[]>('/users');
      printResult(!!o.json, us, () =>
        table([
          ['NAME', 'ROLE', 'CREATED', 'UPDATED'],
          ...us.map((u) => [u.name, u.role, u.createdAt, u.updatedAt]),
        ]),
      );
    });

  apiOptions(user.command('passwd'))
    .description(
      "set a user's password (an admin's token: anyone's; your own token: yours, with the current one)",
    )
    .argument('<name>')
    .option('--password-file <file>', PASSWORD_HELP)
    .option(
      '--current-password-file <file>',
      'a file holding your current password (changing your own without admin)',
    )
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { passwordFile?: string; currentPasswordFile?: string }) => {
      const c = connect(o);
      const currentPassword =
        o.currentPasswordFile !== undefined
          ? await readPassword({ file: o.currentPasswordFile, what: 'current password', confirm: false })
          : undefined;
      const password = await readPassword({ file: o.passwordFile, what: 'new password', confirm: true });
      const u = await c.put<User>(`/users/${enc(name)}/password`, {
        password,
        ...(currentPassword !== undefined ? { currentPassword } : {}),
      });
      printResult(!!o.json, u, () => `password of user ${u.name} changed; its other console sessions ended`);
    });

  apiOptions(user.command('role'))
    .description("change a user's role")
    .argument('<name>')
    .argument('<role>', 'admin, operator or viewer')
    .option('--json', 'print JSON')
    .action(async (name: string, role: string, o: JsonOpts) => {
      const u = await connect(o).put<User>(`/users/${enc(name)}/role`, { role });
      printResult(!!o.json, u, () => `user ${u.name} is now ${u.role}`);
    });

  apiOptions(user.command('delete'))
    .description('delete a user: their sessions end and their API tokens stop working')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      await connect(o).delete(`/users/${enc(name)}`);
      printResult(!!o.json, { deleted: name }, () => `user ${name} deleted`);
    });

  const token = user.command('token').description("a user's API tokens, for scripts: each acts as its user");

  apiOptions(token.command('create'))
    .description('make an API token (printed this once)')
    .argument('<user>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const t = await connect(o).post<UserToken & { token: string }>(`/users/${enc(name)}/tokens`);
      printResult(
        !!o.json,
        t,
        () =>
          `${t.token}\n(token ${t.id} of user ${t.user}, shown this once: keep it in a file of mode 0600 and give it with --token-file)`,
      );
    });

  apiOptions(token.command('list'))
    .description("a user's API tokens (ids, never the tokens)")
    .argument('<user>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const ts = await connect(o).get<UserToken[]>(`/users/${enc(name)}/tokens`);
      printResult(!!o.json, ts, () =>
        table([['ID', 'CREATED', 'LAST USED'], ...ts.map((t) => [t.id, t.createdAt, t.lastUsedAt ?? '-'])]),
      );
    });

  apiOptions(token.command('delete'))
    .description('revoke an API token')
    .argument('<user>')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (name: string, id: string, o: JsonOpts) => {
      await connect(o).delete(`/users/${enc(name)}/tokens/${enc(id)}`);
      printResult(!!o.json, { deleted: id, user: name }, () => `token ${id} of user ${name} revoked`);
    });
}
