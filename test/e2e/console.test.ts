// The web console in a real browser (Debian's Chromium through playwright-core) against a real
// daemon with the test guest: an operator signs in, sees the demo VM, backs it up and watches the
// job reach 100 %, finds the backup, recovers it instantly, reads the recovered VM's console and
// finalizes; bad input in a form shows the API's message beside the field and changes nothing; a
// viewer's operations are refused in the page and by the API. Every page is scanned by axe-core
// (no serious or critical violation), the browser console shows no error, and screenshots of the
// dashboard, the VM page and a running job are written at 1280×800.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestArgs, site } from '../support/site.js';
import { launch, scan, signInPage, tab, testOutput } from '../support/browser.js';
import { errorOf, signIn } from '../support/console-client.js';

const T = 60_000;

test('the console in Chromium: back up, watch, recover instantly, finalize; bad input; a viewer is refused', async (t) => {
  const s = await site(t);
  const repo = join(s.dir, '..', 'repo');
  const pw = join(s.dir, '..', 'pw');
  writeFileSync(pw, 'console-password\n');
  await s.haven('user', 'add', 'otto', '--role', 'operator', '--password-file', pw);
  await s.haven('user', 'add', 'vera', '--role', 'viewer', '--password-file', pw);
  await s.haven('volume', 'create', 'demo-disk', '--size', '64M');
  await s.haven(
    'vm',
    'create',
    'demo',
    '--disk',
    'demo-disk',
    ...guestArgs('write-pattern disk=vda seed=4 count=8 len=64K; ping'),
  );
  await s.haven('vm', 'start', 'demo');
  await s.haven('repo', 'init', '--repo', repo);
  const { url } = await s.info();
  const out = testOutput('console');
  const violations: string[] = [];

  const browser = await launch(t);
  const op = await tab(browser);
  const page = op.page;
  const t0 = performance.now();
  const step = (what: string) => t.diagnostic(`${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}`);

  await page.goto(url);
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
  await scan(page, 'login', violations);
  await signInPage(page, url, 'otto', 'console-password');
  await page.locator('tr[data-vm="demo"]').waitFor({ timeout: T });
  await page.locator('.live.on').waitFor({ timeout: T });
  step('signed in as otto, the dashboard shows demo');
  await page.screenshot({ path: join(out, 'dashboard.png') });
  await scan(page, 'dashboard', violations);

  // Bad input. What the form can tell (a size of -1, a name with "/", a name left empty) is shown
  // beside its field and nothing is sent; what only the API knows (an unknown pool, a name that is
  // taken) comes back from the API, beside its field. Nothing is created either way, and the API
  // refuses the client-side cases on its own too (the console decides nothing).
  await page.getByRole('link', { name: 'Volumes', exact: true }).click();
  await page.getByRole('heading', { name: 'Create a volume' }).waitFor();
  await scan(page, 'volumes', violations);
  const form = page.locator('#create-volume');
  const sent: string[] = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && r.url().endsWith('/api/v1/volumes')) sent.push(r.postData() ?? '');
  });
  const attempt = async (name: string, size: string, pool: string, field: string, re: RegExp) => {
    await form.getByLabel('Name').fill(name);
    await form.getByLabel('Size in bytes').fill(size);
    await form.getByLabel('Pool').fill(pool);
    await form.getByRole('button', { name: 'Create volume' }).click();
    const err = page.locator(`#create-volume-${field}-error`, { hasText: re });
    await err.waitFor({ timeout: T });
    assert.equal(
      await page.locator(`#create-volume-${field}`).getAttribute('aria-invalid'),
      'true',
      `${field} is marked invalid`,
    );
  };
  await attempt('bad-size', '-1', '', 'size', /"-1" is not a size: a whole number of bytes, at least 1/);
  await attempt('a/b', '1048576', '', 'name', /"a\/b" is not a name: no "\/"/);
  await attempt('', '1048576', '', 'name', /Name is required/);
  await attempt('bad-pool', '1048576', 'no/pool', 'pool', /is not a name/);
  assert.deepEqual(sent, [], 'the form sent nothing it could tell was wrong');
  await attempt('nopool-vol', '1048576', 'nopool', 'pool', /nopool/);
  await attempt('demo-disk', '1048576', '', 'name', /demo-disk.*exists|exists.*demo-disk/);
  assert.equal(sent.length, 2, 'the API was asked for what only it knows');
  const otto = await signIn(url, 'otto', 'console-password');
  const bySize = await otto.call('POST', '/volumes', { name: 'bad-size', sizeBytes: -1 });
  assert.equal(bySize.status, 400);
  assert.match(errorOf(bySize).message, /sizeBytes/);
  const bySlash = await otto.call('POST', '/volumes', { name: 'a/b', sizeBytes: 1048576 });
  assert.equal(bySlash.status, 400);
  assert.match(errorOf(bySlash).message, /name/);
  const vols = JSON.parse(await s.haven('volume', 'list', '--json')) as { name: string }[];
  assert.deepEqual(
    vols.map((v) => v.name),
    ['demo-disk'],
    'bad input changed nothing',
  );
  step('bad input: -1, a/b, no name refused in the page unsent; an unknown pool and a taken name by the API');

  // The VM page: back up now, the job's progress to 100 %.
  await page.goto(`${url}/vms/demo`);
  await page.getByRole('heading', { name: /VM demo/ }).waitFor({ timeout: T });
  await page.locator('pre.console', { hasText: '"event":"done"' }).waitFor({ timeout: T });
  await page.screenshot({ path: join(out, 'vm.png'), fullPage: false });
  await scan(page, 'vm', violations);
  await page.locator('#backup-repo').fill(repo);
  await page.getByRole('button', { name: 'Back up now' }).click();
  await page.getByRole('heading', { name: /Job vm.backup demo/ }).waitFor({ timeout: T });
  const jobUrl = page.url();
  await page.screenshot({ path: join(out, 'job-running.png') });
  step(`the backup job's page (${jobUrl}), state ${await page.locator('h1 .badge').textContent()}`);
  await page.locator('.pct[data-pct="100"]').waitFor({ timeout: 120_000 });
  await page.locator('h1 .badge', { hasText: 'succeeded' }).waitFor({ timeout: T });
  await page.locator('pre.log', { hasText: 'backing up VM demo' }).waitFor({ timeout: T });
  await scan(page, 'job', violations);
  step('the backup reached 100 % and succeeded, its log streamed');

  // The new backup on the VM page, and its instant recovery.
  await page.goto(`${url}/vms/demo`);
  const row = page.locator('table.backups tbody tr').first();
  await row.waitFor({ timeout: T });
  const backupId = await row.getAttribute('data-backup');
  await row.getByRole('button', { name: 'Instant recovery…' }).click();
  await row.getByLabel('Name of the recovered VM').fill('demo-rec');
  await row.getByRole('button', { name: 'Recover now' }).click();
  await page.getByRole('heading', { name: /VM demo-rec/ }).waitFor({ timeout: T });
  await page.getByRole('heading', { name: 'Running from a backup' }).waitFor({ timeout: T });
  await page.locator('pre.console', { hasText: '"event":"done"' }).waitFor({ timeout: 120_000 });
  step(`backup ${backupId} recovered instantly as demo-rec; its console log shows the guest`);
  await scan(page, 'recovered vm', violations);
  await page.getByRole('button', { name: 'Finalize' }).click();
  await page
    .getByRole('heading', { name: 'Running from a backup' })
    .waitFor({ state: 'detached', timeout: 120_000 });
  const recs = JSON.parse(await s.haven('recover', 'list', '--json')) as unknown[];
  assert.equal(recs.length, 0, 'no VM runs from a backup after finalize');
  step('finalized: demo-rec runs on its own volumes');

  for (const [name, path] of [
    ['vms', '/vms'],
    ['pools', '/pools'],
    ['repositories', '/repositories'],
    ['jobs', '/jobs'],
    ['events', '/events'],
  ] as const) {
    await page.goto(`${url}${path}`);
    await page.locator('main h1').waitFor({ timeout: T });
    await page.locator('main table, main p.muted').first().waitFor({ timeout: T });
    await scan(page, name, violations);
  }
  // Restore the backup's disk to a new volume, from the repositories page.
  await page.goto(`${url}/repositories`);
  const inRepo = page.locator(`tr[data-backup="${backupId}"]`);
  await inRepo.waitFor({ timeout: T });
  await inRepo.getByRole('button', { name: 'Restore to a new volume…' }).click();
  await inRepo.getByLabel('New volume name').fill('demo-restored');
  await inRepo.getByRole('button', { name: 'Restore' }).click();
  await page.getByRole('heading', { name: /Job volume.restore demo-restored/ }).waitFor({ timeout: T });
  await page.locator('h1 .badge', { hasText: 'succeeded' }).waitFor({ timeout: T });
  assert.ok((await s.haven('volume', 'list')).includes('demo-restored'), 'the restored volume is there');
  step('restored the backup to volume demo-restored');

  // Snapshot, clone, revert and delete on a volume's page; what destroys asks, naming the loss.
  await page.goto(`${url}/volumes/demo-restored`);
  await page.getByRole('heading', { name: 'Volume demo-restored' }).waitFor({ timeout: T });
  await page.locator('#snapshot').getByLabel('Snapshot name').fill('s1');
  await page.getByRole('button', { name: 'Take snapshot' }).click();
  await page.getByRole('rowheader', { name: 's1' }).waitFor({ timeout: T });
  await scan(page, 'volume', violations);
  await page.locator('#clone').getByLabel('New volume name').fill('demo-clone');
  await page.getByRole('button', { name: 'Clone' }).click();
  await page.locator('#clone [role=status]').waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Revert' }).click();
  const dialog = page.getByRole('dialog');
  assert.match((await dialog.textContent()) ?? '', /Every write to demo-restored since s1 is lost/);
  await scan(page, 'confirm dialog', violations);
  await page.keyboard.press('Escape'); // cancelled: nothing happens
  await dialog.waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Revert' }).click();
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.goto(`${url}/volumes/demo-clone`);
  await page.getByRole('button', { name: 'Delete volume demo-clone' }).click();
  assert.match((await dialog.textContent()) ?? '', /Delete volume demo-clone\? Its data .* are lost/);
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('heading', { name: 'Volumes' }).waitFor({ timeout: T });
  const names = (JSON.parse(await s.haven('volume', 'list', '--json')) as { name: string }[]).map(
    (v) => v.name,
  );
  assert.ok(names.includes('demo-restored') && !names.includes('demo-clone'), names.join(' '));
  const events = JSON.parse(
    await s.haven('event', 'list', '--json', '--actor', 'otto@127.0.0.1', '--limit', '500'),
  ) as {
    action: string;
  }[];
  assert.ok(
    ['snapshot.create', 'volume.clone', 'snapshot.revert', 'volume.delete'].every((a) =>
      events.some((e) => e.action === a),
    ),
    `the audit log names otto for each: ${events.map((e) => e.action).join(' ')}`,
  );
  step('snapshot s1, clone demo-clone, revert (cancelled once, then confirmed), delete demo-clone');
  await page.goto(`${url}/events`);
  await page.getByLabel('Actor').fill('otto@127.0.0.1');
  await page.getByLabel('Actor').press('Enter');
  await page.locator('td', { hasText: 'otto@' }).first().waitFor({ timeout: T });

  // Narrow: the dashboard still works at 390 px.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(url);
  await page.locator('tr[data-vm="demo"]').waitFor({ timeout: T });
  await page.screenshot({ path: join(out, 'dashboard-narrow.png') });
  await scan(page, 'dashboard narrow', violations);

  // Keyboard: Tab reaches the skip link first and the navigation next.
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate('document.activeElement?.textContent'), 'Skip to content');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate('document.activeElement?.textContent'), 'Dashboard');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('button', { name: 'Sign in' }).waitFor();

  // A viewer: everything to see, operations refused in the page and by the API.
  const vw = await tab(browser);
  await signInPage(vw.page, url, 'vera', 'console-password');
  await vw.page.getByRole('note').waitFor();
  await vw.page.goto(`${url}/vms/demo`);
  await vw.page.locator('#backup-repo').fill(repo);
  await vw.page.getByRole('button', { name: 'Back up now' }).click();
  const refused = vw.page.locator('#backup .error');
  await refused.waitFor({ timeout: T });
  assert.match((await refused.textContent()) ?? '', /needs the operator role; user vera is viewer/);
  await scan(vw.page, 'vm (viewer)', violations);
  const vera = await signIn(url, 'vera', 'console-password');
  const direct = await vera.call('POST', '/vms/demo/backup', { repo });
  assert.equal(direct.status, 403);
  assert.equal(errorOf(direct).code, 'PERMISSION_DENIED');
  const jobs = JSON.parse(await s.haven('job', 'list', '--json')) as { kind: string }[];
  assert.equal(jobs.filter((j) => j.kind === 'vm.backup').length, 1, "the viewer's backup was not run");
  step('the viewer was refused, in the page and by the API');

  assert.deepEqual(violations, [], 'axe-core: no serious or critical violation');
  assert.deepEqual([...op.errors, ...vw.errors], [], 'no console error');
  t.diagnostic(
    `screenshots in ${out}; refusals the test provoked: ${op.refusals.length + vw.refusals.length}`,
  );
  await op.context.close();
  await vw.context.close();
});
