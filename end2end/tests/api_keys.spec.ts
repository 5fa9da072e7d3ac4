import * as fs from 'fs';
import { test, expect } from '@playwright/test';
import { ADMIN, MERCHANT, cli, createKey, hydrated, settled, signIn, sql, watchForBrokenBundle } from './helpers';

test('a merchant creates a key, calls the API with it, and revokes it', async ({ page, request }) => {
  await signIn(page, MERCHANT);

  // A refused name: the message is tied to the field, and the keyboard stays on the button.
  await page.getByTestId('key-name').fill('   ');
  await page.getByRole('button', { name: 'Create key' }).focus();
  await page.keyboard.press('Enter');
  await expect(page.getByTestId('create-key-error')).toHaveText('Give the key a name.');
  await expect(page.getByRole('button', { name: 'Create key' })).toBeFocused();
  await expect(page.getByRole('button', { name: 'Create key' })).not.toHaveAttribute('aria-disabled', 'true');

  const name = `Checkout ${Date.now()}`;
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  const secret = (await page.getByTestId('new-secret').textContent())!.trim();
  expect(secret).toMatch(/^km_live_[0-9A-Za-z]{40}$/);
  // The keyboard lands on "Copy": the secret is shown this once.
  await expect(page.getByTestId('copy-secret')).toBeFocused();
  // The example call names this server, not a fixed local address.
  await expect(page.getByTestId('try-it')).toHaveText(`curl -H "Authorization: Bearer ${secret}" ${process.env.KEYMETER_BASE_URL}/api/v1/ping`);
  await page.getByTestId('copy-secret').click();
  await expect(page.getByTestId('copy-secret')).toHaveText('Copied');

  const row = page.getByTestId('key-row').filter({ hasText: name });
  await expect(row).toHaveAttribute('data-status', 'active');
  await page.screenshot({ path: 'test-results/api-keys.png', fullPage: true });
  // Current quota and use, for the hour and the UTC day.
  await expect(row.getByTestId('key-quota')).toHaveText('0 / 1,000 this hour · 0 / 10,000 today');
  await expect(row).not.toContainText(secret);

  const calledAt = Date.now();
  const ok = await request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
  expect(ok.status()).toBe(200);
  // The list shows the call after a reload, once "last used" has been recorded (see settled()).
  const keyId = (await row.getAttribute('data-key-id'))!;
  await settled(page, 'keys/get', (key) => key.last_used_at && Date.parse(key.last_used_at) >= calledAt - 1000, { id: keyId });
  await page.reload();
  await hydrated(page);
  await expect(row.getByTestId('key-quota')).toHaveText('1 / 1,000 this hour · 1 / 10,000 today');

  // The confirmation takes the focus (a keyboard user lands on it); Escape and Cancel close it.
  await row.getByTestId('revoke').click();
  await expect(row.getByRole('alertdialog')).toContainText('Revoke');
  await expect(row.getByTestId('confirm-revoke')).toBeFocused();
  await expect(row.getByRole('alertdialog')).toHaveAccessibleDescription(/Calls with it will be refused within seconds/);
  await page.keyboard.press('Escape');
  await expect(row.getByRole('alertdialog')).toBeHidden();
  // The keyboard is back on "Revoke…", not dropped to the top of the page.
  await expect(row.getByTestId('revoke')).toBeFocused();
  await row.getByTestId('revoke').click();
  await row.getByRole('button', { name: 'Cancel' }).click();
  await expect(row.getByRole('alertdialog')).toBeHidden();
  await expect(row).toHaveAttribute('data-status', 'active');
  await row.getByTestId('revoke').click();
  await row.getByTestId('confirm-revoke').click();
  await expect(row).toHaveAttribute('data-status', 'revoked');
  // "Revoke…" went with the key: what happened is said where the keyboard now is.
  await expect(page.getByTestId('revoked')).toHaveText(`“${name}” is revoked: calls with it are refused.`);
  await expect(page.getByTestId('revoked')).toBeFocused();

  const denied = await request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
  expect(denied.status()).toBe(401);
  expect((await denied.json()).error.code).toBe('revoked_api_key');

  // The secret is gone for good after a reload.
  await page.reload();
  await hydrated(page);
  await expect(page.locator('body')).not.toContainText(secret);
});

test('the key list follows use, limits and keys changed elsewhere while it stays open, leaving an open confirmation alone', async ({ page, request }) => {
  // The list reads its keys again every half minute: the page's clock is moved on instead of waited for.
  await page.clock.install();
  await signIn(page, MERCHANT);
  const name = `Follow ${Date.now()}`;
  const { secret, row, keyId } = await createKey(page, name);
  await expect(row.getByTestId('key-quota')).toHaveText('0 / 1,000 this hour · 0 / 10,000 today');
  const hourOfCalls = new Date().toISOString().slice(0, 13);
  for (let i = 0; i < 2; i++) {
    const ok = await request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
    expect(ok.status()).toBe(200);
  }
  cli(['quota', 'set', '--key', keyId, '--per-hour', '5', '--per-day', '100', '--reason', 'browser test']);
  await row.getByTestId('revoke').click();
  await expect(row.getByRole('alertdialog')).toBeVisible();

  await page.clock.fastForward('00:31');
  await expect(row.getByTestId('key-quota')).toHaveText(/^\d+ \/ 5 this hour · \d+ \/ 100 today$/);
  // The two calls, unless the hour (or the day) turned meanwhile and its count started again.
  if (new Date().toISOString().slice(0, 13) === hourOfCalls) {
    await expect(row.getByTestId('key-quota')).toHaveText('2 / 5 this hour · 2 / 100 today');
  }
  // Only the column changed: the question is still open, with the keyboard on it.
  await expect(row.getByRole('alertdialog')).toBeVisible();
  await expect(row.getByTestId('confirm-revoke')).toBeFocused();

  // Renamed and revoked elsewhere (another tab): the next reading makes the rows again.
  const renamed = `${name} (elsewhere)`;
  expect((await page.request.post('/rpc/keys/rename', { form: { id: keyId, name: renamed } })).ok()).toBe(true);
  expect((await page.request.post('/rpc/keys/revoke', { form: { id: keyId } })).ok()).toBe(true);
  await page.clock.fastForward('00:31');
  const moved = page.locator(`[data-testid="key-row"][data-key-id="${keyId}"]`);
  await expect(moved).toHaveAttribute('data-status', 'revoked');
  await expect(moved).toContainText(renamed);
  await expect(moved.getByTestId('revoke')).toHaveCount(0);
  await expect(moved.getByTestId('key-quota')).toHaveText('5/h · 100/day');
});

test('a merchant renames a key on its page; the name changes in place and in the list', async ({ page }) => {
  await signIn(page, MERCHANT);
  const name = `Rename me ${Date.now()}`;
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  await expect(page.getByTestId('new-secret')).toBeVisible();
  await page.getByTestId('key-row').filter({ hasText: name }).getByRole('link', { name, exact: true }).click();
  await expect(page.getByTestId('key-title')).toHaveText(name);
  await hydrated(page);

  await expect(page.getByTestId('rename-name')).toHaveValue(name);
  await page.getByTestId('rename-name').fill('   ');
  await page.getByTestId('rename-save').click();
  await expect(page.getByTestId('rename-error')).toHaveText('Give the key a name.');
  await expect(page.getByTestId('rename-name')).toHaveAttribute('aria-invalid', 'true');
  await expect(page.getByTestId('key-title')).toHaveText(name);

  const renamed = `${name} (production)`;
  await page.getByTestId('rename-name').fill(`  ${renamed}`);
  await page.getByTestId('rename-save').focus();
  await page.keyboard.press('Enter');
  await expect(page.getByTestId('renamed')).toHaveText(`Renamed to “${renamed}”.`);
  await expect(page.getByTestId('key-title')).toHaveText(renamed);
  await expect(page.locator('.crumbs')).toContainText(renamed);
  await expect(page).toHaveTitle(`${renamed} · API keys · keymeter`);
  await expect(page.getByTestId('rename-error')).toHaveCount(0);
  await expect(page.getByTestId('rename-name')).not.toHaveAttribute('aria-invalid', 'true');
  // Updated in place: the keyboard stays where it was.
  await expect(page.getByTestId('rename-save')).toBeFocused();
  // The questions asked on the page name the key as it is called now.
  await page.getByTestId('old-secret-hours').selectOption({ label: 'in 1 hour' });
  await page.getByTestId('roll-key').click();
  await expect(page.getByTestId('roll').getByRole('alertdialog')).toHaveAccessibleDescription(`Give “${renamed}” a new secret? It is shown once; the current one stops working in 1 hour.`);
  await page.keyboard.press('Escape');
  await page.getByTestId('revoke-key').getByTestId('revoke').click();
  await expect(page.getByTestId('revoke-key').getByRole('alertdialog')).toContainText(`Revoke “${renamed}”?`);
  await page.keyboard.press('Escape');

  await page.getByRole('link', { name: 'API keys', exact: true }).first().click();
  await expect(page.getByTestId('key-row').filter({ hasText: renamed })).toHaveAttribute('data-status', 'active');
});

test('a merchant rolls a key on its page; the old secret works until they stop it', async ({ page, request }) => {
  await signIn(page, MERCHANT);
  const name = `Roll me ${Date.now()}`;
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  const old = (await page.getByTestId('new-secret').textContent())!.trim();
  await page.getByTestId('key-row').filter({ hasText: name }).getByRole('link', { name, exact: true }).click();
  await expect(page.getByTestId('key-title')).toHaveText(name);
  await hydrated(page);
  await expect(page.getByTestId('rolled-at')).toHaveText('never');

  // A day's overlap; rolling asks first, where the keyboard is.
  await page.getByTestId('old-secret-hours').selectOption({ label: 'in 24 hours' });
  await page.getByTestId('roll-key').click();
  await expect(page.getByTestId('roll').getByRole('alertdialog')).toHaveAccessibleDescription(`Give “${name}” a new secret? It is shown once; the current one stops working in 24 hours.`);
  await expect(page.getByTestId('confirm-roll')).toBeFocused();
  await page.getByTestId('confirm-roll').click();
  const fresh = (await page.getByTestId('new-secret').textContent())!.trim();
  expect(fresh).toMatch(/^km_live_[0-9A-Za-z]{40}$/);
  expect(fresh).not.toBe(old);
  await expect(page.getByTestId('copy-secret')).toBeFocused();
  // The question was answered: it is closed, "Roll key…" is there again, and the choice is back
  // to its default, as the next question would say.
  await expect(page.getByTestId('roll').getByRole('alertdialog')).toBeHidden();
  await expect(page.getByTestId('roll-key')).toBeVisible();
  await expect(page.getByTestId('old-secret-hours')).toHaveValue('0');
  await expect(page.getByTestId('roll').locator('[id^="roll-question-"]')).toHaveText(/the current one stops working at once\. The previous secret km_live_\w{6}… stops at once\.$/);
  await expect(page.getByTestId('previous-secret')).toContainText(`${old.slice(0, 14)}… works until`);
  await expect(page.getByTestId('previous-secret')).toContainText('not used since the roll');
  await expect(page.getByTestId('overlap')).toContainText(`The previous secret ${old.slice(0, 14)}… keeps working until`);
  await page.screenshot({ path: 'test-results/key-rolled.png', fullPage: true });

  const call = (secret: string) => request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
  expect((await call(fresh)).status()).toBe(200);
  expect((await call(old)).status()).toBe(200);
  // Something still calls with the old secret: the page says so (written within moments).
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId('overlap')).toContainText('; last used 20', { timeout: 1000 });
  }).toPass({ timeout: 15000 });
  await hydrated(page);

  // The integrations use the new secret: the owner stops the old one early.
  await page.getByTestId('end-overlap').click();
  await expect(page.getByTestId('confirm-end-overlap')).toBeFocused();
  await page.getByTestId('confirm-end-overlap').click();
  await expect(page.getByTestId('previous-secret')).toContainText('stopped working');
  await expect(page.getByTestId('overlap')).toHaveCount(0);
  // Said where the keyboard is.
  await expect(page.getByTestId('overlap-ended')).toHaveText(`The previous secret ${old.slice(0, 14)}… no longer works: calls with it are refused.`);
  await expect(page.getByTestId('overlap-ended')).toBeFocused();
  const refused = await call(old);
  expect(refused.status()).toBe(401);
  expect((await refused.json()).error.code).toBe('rolled_api_key');
  expect((await call(fresh)).status()).toBe(200);

  // Rolled again: the secret of the last roll is now the previous one, with its own "Stop it
  // now…"; what was said of the one before is gone with it.
  await page.getByTestId('old-secret-hours').selectOption({ label: 'in 24 hours' });
  await page.getByTestId('roll-key').click();
  await page.getByTestId('confirm-roll').click();
  await expect(page.getByTestId('new-secret')).toBeVisible();
  await expect(page.getByTestId('overlap')).toContainText(`The previous secret ${fresh.slice(0, 14)}… keeps working until`);
  await expect(page.getByTestId('previous-secret')).toContainText(`${fresh.slice(0, 14)}… works until`);
  await expect(page.getByTestId('end-overlap')).toBeVisible();
  await expect(page.getByTestId('overlap-ended')).toHaveCount(0);
  await expect(page.getByTestId('copy-secret')).toBeFocused();
});

test("a merchant opening another merchant's key page is refused", async ({ page }) => {
  const other = `other-${Date.now()}@example.com`;
  cli(['user', 'add', '--email', other, '--role', 'merchant'], 'another long password\n');
  cli(['key', 'create', '--owner', other, '--name', 'Not yours']);
  const listing = cli(['key', 'list', '--owner', other]);
  const id = listing.trim().split(/\s+/)[0];
  expect(id).toMatch(/^[0-9a-f-]{36}$/);

  await signIn(page, MERCHANT);
  const res = await page.goto(`/dashboard/developers/api-keys/${id}`);
  expect(res!.status()).toBe(404);
  await hydrated(page);
  await expect(page.getByTestId('error-panel')).toContainText('Not found');
  await expect(page).toHaveTitle('Not found · keymeter');
  await expect(page.locator('body')).not.toContainText('Not yours');
});

test('a merchant opening /admin is refused; an admin sees every key', async ({ page, browser }) => {
  await signIn(page, MERCHANT);
  const res = await page.goto('/admin');
  expect(res!.status()).toBe(403);
  await hydrated(page);
  await expect(page.getByTestId('error-panel')).toContainText('Forbidden');

  const adminPage = await (await browser.newContext()).newPage();
  await signIn(adminPage, ADMIN);
  await adminPage.getByRole('link', { name: 'All keys' }).click();
  await expect(adminPage).toHaveURL(/\/admin$/);
  await expect(adminPage.getByTestId('admin-keys')).toContainText(MERCHANT.email);

  // The month's usage of every key, for invoicing, from the same page.
  // The form starts at the month that just ended, the one to invoice.
  const lastMonth = new Date();
  lastMonth.setUTCDate(1);
  lastMonth.setUTCMonth(lastMonth.getUTCMonth() - 1);
  await expect(adminPage.getByTestId('invoice-form').getByLabel('Month')).toHaveValue(lastMonth.toISOString().slice(0, 7));
  // The month of yesterday, the demo key's latest seeded day (today's month has no history on
  // its first day).
  const month = new Date(Date.now() - 86_400_000).toISOString().slice(0, 7);
  await adminPage.getByTestId('invoice-form').getByLabel('Month').fill(month);
  const [download] = await Promise.all([
    adminPage.waitForEvent('download'),
    adminPage.getByRole('button', { name: 'Export month (CSV)' }).click(),
  ]);
  expect(download.suggestedFilename()).toBe(`keymeter-usage-${month}.csv`);
  const csv = fs.readFileSync((await download.path())!, 'utf8').split('\r\n'); // RFC 4180 line ends
  // The key export's columns, and the owner the invoice goes to.
  expect(csv[0]).toBe('period_start,key_id,key_name,method,endpoint,requests,errors_4xx,errors_5xx,throttled,bytes_in,bytes_out,p50_ms,p95_ms,owner_email');
  expect(csv.some((line) => line.includes(',Demo key,GET,/api/v1/ping,') && line.endsWith(`,${MERCHANT.email}`))).toBe(true);

  // Any key's usage is one click away.
  await adminPage.getByTestId('admin-keys').getByRole('row').filter({ hasText: 'Demo key' }).getByRole('link', { name: 'usage' }).click();
  await expect(adminPage.getByTestId('usage-title')).toContainText('Demo key');
  // A merchant's key offers an admin no owner-only forms: no increase request (the server would
  // refuse it), and the owner's alert choices are shown, not editable.
  await expect(adminPage.getByTestId('not-owner')).toBeVisible();
  await expect(adminPage.getByTestId('ask-reason')).toHaveCount(0);
  await adminPage.getByRole('link', { name: 'Demo key' }).first().click();
  await expect(adminPage.getByTestId('key-title')).toHaveText('Demo key');
  await expect(adminPage.getByTestId('alert-emails-chosen')).toContainText(`Alerts that email ${MERCHANT.email}:`);
  await expect(adminPage.getByTestId('alert-save')).toHaveCount(0);
  await expect(adminPage.getByTestId('not-owner')).toBeVisible();
});

test('signing out returns to the sign-in page and protects the dashboard', async ({ page }) => {
  await signIn(page, MERCHANT);
  // Nothing on the way out asks the server for what only a session may see.
  const refused: string[] = [];
  page.on('response', (res) => { if (res.status() === 401) refused.push(res.url()); });
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await expect(page).toHaveURL(/\/login$/);
  await hydrated(page);
  await page.waitForTimeout(1000);
  expect(refused).toEqual([]);
  watchForBrokenBundle(page);
  await page.goto('/dashboard/developers/api-keys');
  await expect(page).toHaveURL(/\/login\?next=/);
});

test('a wrong password shows one message for every failure', async ({ page }) => {
  watchForBrokenBundle(page);
  await page.goto('/login');
  await hydrated(page);
  await page.getByLabel('Email').fill(MERCHANT.email);
  await page.getByLabel('Password').fill('definitely wrong');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('login-error')).toHaveText('Invalid email or password.');
  // An account that does not exist reads the same: the page does not tell who has one.
  await page.getByLabel('Email').fill(`nobody-${Date.now()}@example.com`);
  const answered = page.waitForResponse((r) => r.url().includes('/rpc/auth/login'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  expect((await answered).status()).toBe(400);
  await expect(page.getByTestId('login-error')).toHaveText('Invalid email or password.');
  await expect(page).toHaveURL(/\/login/);
});

test('a merchant with many keys pages through them, the active ones first', async ({ page }) => {
  const owner = `many-${Date.now()}@example.com`;
  cli(['user', 'add', '--email', owner, '--role', 'merchant'], 'a long password here\n');
  // 52 keys, the newest revoked: 51 active ones fill the first page and one more.
  sql(`WITH k AS (
         INSERT INTO api_keys (id, owner_id, name, prefix, secret_hash, created_at, revoked_at)
         SELECT gen_random_uuid(), (SELECT id FROM users WHERE email = '${owner}'), 'Bulk ' || i, 'km_live_bulk',
                sha256(('${owner}' || i)::bytea), now() - (100 - i) * interval '1 minute',
                CASE WHEN i = 52 THEN now() END
         FROM generate_series(1, 52) AS i RETURNING id)
       INSERT INTO api_key_quotas (api_key_id) SELECT id FROM k`);
  await signIn(page, { email: owner, password: 'a long password here' });
  const rows = page.getByTestId('key-row');
  await expect(rows).toHaveCount(50);
  await expect(rows.first()).toContainText('Bulk 51');
  await expect(page.getByTestId('previous')).toHaveCount(0);
  await page.getByTestId('next').click();
  await expect(page).toHaveURL(/api-keys\?page=2$/);
  await expect(rows).toHaveCount(2);
  await expect(rows.nth(0)).toContainText('Bulk 1');
  await expect(rows.nth(1)).toHaveAttribute('data-status', 'revoked');
  await expect(page.getByTestId('next')).toHaveCount(0);
  await page.getByTestId('previous').click();
  await expect(rows.first()).toContainText('Bulk 51');
});
