import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Command } from 'commander';
import { buildProgram } from './program.js';

/**
 * The commands that need no --json, and why (docs/cli.md says the same). Every other command —
 * every list, show, create and job-starting one, and any command added later — must take it.
 */
const WITHOUT_JSON: Record<string, string> = {
  'haven serve': 'a foreground server',
  'haven storage serve': 'a foreground server',
  'haven nbd serve': 'a foreground server',
  'haven backup mount': 'a foreground server',
  'haven vm console-log': 'prints the raw console',
  'haven vm delete': 'only deletes',
  'haven network delete': 'only deletes',
  'haven network map remove': 'only deletes',
  'haven pool delete': 'only deletes',
  'haven volume delete': 'only deletes',
  'haven volume resize': 'only changes',
  'haven snapshot delete': 'only deletes',
  'haven snapshot revert': 'only changes',
  'haven bitmap remove': 'only deletes',
  'haven bitmap clear': 'only changes',
  'haven repo protect': 'only changes',
  'haven repo forget': 'only deletes',
  'haven job cancel': 'only asks',
  'haven site unpair': 'only deletes',
};

/** Every command that runs (has an action), with its full name. */
function commands(): { name: string; cmd: Command }[] {
  const out: { name: string; cmd: Command }[] = [];
  const walk = (cmd: Command, path: string[]) => {
    const name = [...path, cmd.name()];
    // commander keeps the action on a private field; a command without one only groups others.
    if ((cmd as unknown as { _actionHandler?: unknown })._actionHandler)
      out.push({ name: name.join(' '), cmd });
    for (const c of cmd.commands) walk(c, name);
  };
  walk(buildProgram(), []);
  return out;
}

const has = (cmd: Command, flag: string) => cmd.options.some((o) => o.long === flag);

test('every command that lists, shows, creates or starts a job takes --json', () => {
  const all = commands();
  assert.ok(all.length > 50, `found ${all.length} commands`);
  const missing = all.filter((c) => !has(c.cmd, '--json') && !(c.name in WITHOUT_JSON)).map((c) => c.name);
  assert.deepEqual(
    missing,
    [],
    'commands without --json (add it, or say why in WITHOUT_JSON and docs/cli.md)',
  );
});

test('every job-starting command (--no-wait) takes --json, and no exemption is stale', () => {
  const all = commands();
  for (const c of all.filter((c) => has(c.cmd, '--no-wait')))
    assert.ok(has(c.cmd, '--json'), `${c.name} starts a job but has no --json`);
  const names = new Set(all.map((c) => c.name));
  for (const name of Object.keys(WITHOUT_JSON)) {
    assert.ok(names.has(name), `${name} is exempt from --json but no longer exists`);
    assert.ok(
      !has(all.find((c) => c.name === name)!.cmd, '--json'),
      `${name} has --json now: drop its exemption`,
    );
  }
});
