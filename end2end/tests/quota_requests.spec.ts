import { test, expect } from '@playwright/test';
import { ADMIN, MERCHANT, createKey, hydrated, settled, signIn } from './helpers';

test('a merchant at the hourly limit asks for more; an admin approves; the next call is admitted', async ({ page, browser, request }) => {
  await signIn(page, MERCHANT);
  const name = `Busy ${Date.now()}`;
  const { secret, row, keyId } = await createKey(page, name, 1);

  const call = () => request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
  expect((await call()).status()).toBe(200);
  expect((await call()).status()).toBe(429);

  // The merchant asks for more from the key's page.
  await row.getByRole('link', { name, exact: true }).click();
  await expect(page.getByTestId('key-title')).toHaveText(name);
  // The page changed without a load: screen readers are told which page it is now.
  await expect(page.getByTestId('route-announcer')).toHaveText(`${name} · API keys · keymeter`);
  // The current limit typed as it is keeps it, as an empty field does: nothing is raised.
  await expect(page.getByTestId('ask-per-hour')).toHaveAttribute('placeholder', '1');
  await page.getByTestId('ask-per-hour').fill('1');
  await page.getByTestId('ask-reason').fill('Launch day');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('ask-error')).toHaveText('Ask for a higher hourly or daily limit.');
  // The error is tied to the field it is about: marked invalid, described by the message.
  await expect(page.getByTestId('ask-per-hour')).toHaveAttribute('aria-invalid', 'true');
  await expect(page.getByTestId('ask-per-hour')).toHaveAccessibleDescription('Ask for a higher hourly or daily limit.');
  await expect(page.getByTestId('ask-reason')).not.toHaveAttribute('aria-invalid', 'true');
  // It is about both limits: typing a daily one answers it as well as an hourly one would.
  await page.getByTestId('ask-per-day').fill('100');
  await expect(page.getByTestId('ask-error')).toHaveCount(0);
  await expect(page.getByTestId('ask-per-hour')).not.toHaveAttribute('aria-invalid', 'true');
  await page.getByTestId('ask-per-day').fill('');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('ask-error')).toHaveText('Ask for a higher hourly or daily limit.');
  // Editing the field the error is about takes the error away until the next answer.
  await page.getByTestId('ask-per-hour').fill('0');
  await expect(page.getByTestId('ask-error')).toHaveCount(0);
  await expect(page.getByTestId('ask-per-hour')).not.toHaveAttribute('aria-invalid', 'true');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('ask-error')).toHaveText('The hourly limit must be above the current 1; leave it empty to keep it.');
  await page.getByTestId('ask-per-hour').fill('25');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');
  // The form is gone (one open request at a time); the keyboard is on what happened instead.
  await expect(page.getByTestId('request-done')).toHaveText('Request for 25/h · 100/day sent. You will be told when an admin decides.');
  await expect(page.getByTestId('request-done')).toBeFocused();

  // An admin approves it.
  const adminPage = await (await browser.newContext()).newPage();
  await signIn(adminPage, ADMIN);
  // The top bar says requests wait, before the admin opens them.
  await expect(adminPage.getByTestId('waiting-requests')).toHaveText(/^\d+ waiting$/);
  await expect(adminPage.getByTestId('nav-quota-requests')).toHaveAccessibleName(/^Quota requests \d+ waiting$/);
  await adminPage.getByRole('link', { name: 'Quota requests' }).click();
  const card = adminPage.getByTestId('admin-request').filter({ hasText: name });
  await expect(card).toHaveAttribute('data-status', 'pending');
  await expect(card).toContainText('Launch day');
  // A bad figure is explained on the card it was typed into.
  await card.getByLabel('Per hour').fill('lots');
  await card.getByTestId('approve').click();
  await expect(card.getByTestId('decision-error')).toHaveText('The hourly limit must be a whole number.');
  await expect(card.getByLabel('Per hour')).toHaveAccessibleDescription('The hourly limit must be a whole number.');
  await expect(card.getByTestId('deny-note')).not.toHaveAttribute('aria-invalid', 'true');
  await card.getByLabel('Per hour').fill('25');
  // Other tests' requests may wait too: the count drops by this one.
  const waiting = Number((await adminPage.getByTestId('waiting-requests').innerText()).match(/^\d+/)![0]);
  await card.getByTestId('approve').click();
  await expect(adminPage.getByTestId('admin-request').filter({ hasText: name })).toHaveAttribute('data-status', 'approved');
  if (waiting > 1) {
    await expect(adminPage.getByTestId('waiting-requests')).toHaveText(`${waiting - 1} waiting`);
  } else {
    await expect(adminPage.getByTestId('waiting-requests')).toHaveCount(0);
  }
  await expect(adminPage.getByTestId('decision-done')).toHaveText(`Approved: “${name}” now allows 25/h · 100/day. ${MERCHANT.email} is told.`);
  await expect(adminPage.getByTestId('decision-done')).toBeFocused();
  // The decided card says what was granted.
  await expect(adminPage.getByTestId('admin-request').filter({ hasText: name }).getByTestId('granted')).toHaveText('25/h · 100/day');

  // The call that was refused is admitted now, and the merchant is told.
  const calledAt = Date.now();
  expect((await call()).status()).toBe(200);
  // The key page shows "last used": reload once that has been recorded.
  await settled(page, 'keys/get', (key) => key.last_used_at && Date.parse(key.last_used_at) >= calledAt - 1000, { id: keyId });
  await page.reload();
  await hydrated(page);
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'approved');
  await expect(page.getByTestId('unread')).toBeVisible();
  // Screen readers hear the count too, not just "Notifications".
  await expect(page.getByTestId('bell')).toHaveAccessibleName(/^Notifications \d+ unread$/);
  await page.getByTestId('bell').click();
  await expect(page.getByTestId('notifications')).toContainText(`Quota raised for “${name}”`);
  // The list, once shown, is marked read: the bell's count goes on the next page.
  await expect.poll(async () => (await (await page.request.post('/rpc/nav/counts')).json()).unread).toBe(0);
  await page.getByRole('link', { name: 'API keys' }).first().click();
  await expect(page.getByTestId('bell')).toBeVisible();
  await expect(page.getByTestId('unread')).toHaveCount(0);

  // The audit trail records it; the top bar leads there.
  await adminPage.locator('header.topbar nav').getByRole('link', { name: 'Quota changes', exact: true }).click();
  await expect(adminPage).toHaveURL(/\/admin\/quota-changes$/);
  await expect(adminPage.getByTestId('audit-trail')).toContainText('Launch day');
});

test('the usage page, where the quota runs out, offers the increase form', async ({ page, browser, request }) => {
  // The page reads an open request again every half minute: its clock is moved on, not waited for.
  await page.clock.install();
  await signIn(page, MERCHANT);
  const name = `Near limit ${Date.now()}`;
  const { secret, row } = await createKey(page, name, 2);
  const call = () => request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
  expect((await call()).status()).toBe(200);
  expect((await call()).status()).toBe(200);
  expect((await call()).status()).toBe(429);

  await row.getByRole('link', { name: 'usage' }).click();
  await expect(page.getByTestId('usage-title')).toContainText(name);
  await expect(page.getByTestId('gauge-hour')).toContainText('2 of 2 requests');
  const form = page.getByTestId('quota-requests');
  // The used-up gauge leads to the form, further down the page.
  const ask = page.getByTestId('gauge-hour-ask');
  await expect(ask).toHaveText('Ask for a higher quota');
  await ask.click();
  await expect(form.getByTestId('ask-per-hour')).toBeInViewport();
  await form.getByTestId('ask-per-hour').fill('40');
  await form.getByTestId('ask-reason').fill('Usage page test');
  await form.getByRole('button', { name: 'Request increase' }).click();
  await expect(form.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');
  await expect(page.getByTestId('usage-title')).toContainText(name);

  const adminPage = await (await browser.newContext()).newPage();
  await signIn(adminPage, ADMIN);
  await adminPage.goto('/admin/quota-requests');
  await hydrated(adminPage);
  const card = adminPage.getByTestId('admin-request').filter({ hasText: name });
  await expect(card).toHaveAttribute('data-status', 'pending');
  await expect(card).toContainText('Usage page test');
  // What waits is counted above the cards.
  await expect(adminPage.getByTestId('waiting-count')).toHaveText(/^\d+ requests? waiting for a decision\.$/);

  // The admin denies it with a note; the audit trail keeps the denial beside the changes.
  await card.getByTestId('deny-note').fill('Cache the status calls first');
  await card.getByTestId('deny').click();
  await expect(adminPage.getByTestId('admin-request').filter({ hasText: name })).toHaveAttribute('data-status', 'denied');
  await expect(adminPage.getByTestId('decision-done')).toHaveText(`Denied: the request for “${name}”. ${MERCHANT.email} is told.`);
  await expect(adminPage.getByTestId('decision-done')).toBeFocused();
  // The merchant's usage page, still open, shows the denial (nothing else on it changed) once
  // it reads the open request again, and offers the form again.
  await page.clock.fastForward('00:31');
  await expect(form.getByTestId('request-row').first()).toHaveAttribute('data-status', 'denied');
  await expect(form.getByTestId('request-row').first()).toContainText('Cache the status calls first');
  await expect(form.getByTestId('ask-per-hour')).toBeVisible();
  await adminPage.goto('/admin/quota-changes');
  // The key's rows: the operator's setup change, then the denial (newest first).
  const rows = adminPage.getByTestId('audit-row').filter({ hasText: name });
  await expect(rows).toHaveCount(2);
  const denial = rows.first();
  await expect(denial).toHaveAttribute('data-decision', 'denied');
  await expect(rows.last()).toHaveAttribute('data-decision', 'set');
  await expect(denial).toContainText('Cache the status calls first');
  await expect(denial.getByRole('link', { name, exact: true })).toHaveAttribute('href', /^\/dashboard\/developers\/api-keys\/[0-9a-f-]{36}$/);
  await expect(denial).toContainText(`${ADMIN.email} (request #`);
  await expect(denial).toContainText('asked 40/h · 100/day');
});

test("an admin sets a key's quota on the key's page; the owner is told", async ({ page, browser }) => {
  await signIn(page, MERCHANT);
  const name = `Set directly ${Date.now()}`;
  const { keyId, secret } = await createKey(page, name);
  // The owner asks for more first; the admin decides on the requests page, not here.
  await page.goto(`/dashboard/developers/api-keys/${keyId}`);
  await hydrated(page);
  await page.getByTestId('ask-per-hour').fill('2000');
  await page.getByTestId('ask-reason').fill('Launch week');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('request-row')).toHaveAttribute('data-status', 'pending');

  const adminPage = await (await browser.newContext()).newPage();
  await signIn(adminPage, ADMIN);
  // Found through the admins' key search, opened, set.
  await adminPage.goto(`/admin?q=${encodeURIComponent(name)}`);
  await hydrated(adminPage);
  await adminPage.getByTestId('admin-keys').getByRole('link', { name, exact: true }).click();
  await expect(adminPage.getByTestId('key-title')).toHaveText(name);
  await expect(adminPage.getByTestId('set-per-hour')).toHaveValue('1000');
  // Back up the breadcrumb is every key's list: the admin's own list does not hold this one.
  await expect(adminPage.locator('.crumbs').getByRole('link', { name: 'All keys' })).toHaveAttribute('href', '/admin');
  await expect(adminPage.getByTestId('request-row').getByRole('link', { name: 'Decide…' })).toHaveAttribute('href', '/admin/quota-requests');
  await expect(adminPage.getByTestId('cancel-request')).toHaveCount(0);
  // A refusal leaves the form as it was, with the keyboard on it.
  await adminPage.getByTestId('set-per-hour').fill('30000');
  await adminPage.getByTestId('set-per-day').fill('25000');
  await adminPage.getByTestId('set-reason').fill('Support ticket 7');
  await adminPage.getByRole('button', { name: 'Set quota' }).click();
  await expect(adminPage.getByTestId('set-quota-error')).toContainText('cannot exceed the daily limit');
  await expect(adminPage.getByRole('button', { name: 'Set quota' })).toBeFocused();
  await expect(adminPage.getByTestId('set-per-hour')).toHaveValue('30000');
  await adminPage.getByTestId('set-per-hour').fill('2,500');
  await adminPage.getByTestId('set-per-day').fill('25000');
  await expect(adminPage.getByTestId('set-burst')).toHaveValue('');
  await adminPage.getByTestId('set-burst').fill('20');
  await adminPage.getByTestId('set-reason').fill('Support ticket 7');
  await adminPage.getByRole('button', { name: 'Set quota' }).click();
  await expect(adminPage.getByTestId('set-done')).toBeFocused();
  await expect(adminPage.locator('dl.facts')).toContainText('2,500 requests per hour (UTC)');
  await expect(adminPage.locator('dl.facts')).toContainText('25,000 requests per day (UTC)');
  await expect(adminPage.locator('dl.facts')).toContainText('20 requests per second');
  await expect(adminPage.getByTestId('set-burst')).toHaveValue('20');

  // The owner's page has no such form, and shows the new quota.
  await page.goto(`/dashboard/developers/api-keys/${keyId}`);
  await hydrated(page);
  await expect(page.locator('dl.facts')).toContainText('2,500 requests per hour (UTC)');
  await expect(page.getByTestId('set-quota')).toHaveCount(0);
  await settled(page, 'notifications/list', (list) =>
    list.some((n: any) => JSON.stringify(n).includes(name) && JSON.stringify(n).includes('Support ticket 7')));

  // A leak report: the admin revokes the key from its page; calls with it stop at once.
  await adminPage.getByTestId('revoke-key').getByTestId('revoke').click();
  await adminPage.getByTestId('confirm-revoke').click();
  await expect(adminPage.locator('dl.facts .badge')).toHaveText('revoked');
  await expect(adminPage.getByTestId('set-quota')).toHaveCount(0);
  await expect(adminPage.getByTestId('revoke-key')).toHaveCount(0);
  const call = await adminPage.request.get('/api/v1/ping', { headers: { 'X-API-Key': secret } });
  expect(call.status()).toBe(401);
});

test("an admin's bell entry for a new request opens that request's card, in view", async ({ page, browser }) => {
  await signIn(page, MERCHANT);
  // Three requests: the newest card is far down the admins' list (oldest first).
  const stamp = Date.now();
  let newest = '';
  for (const i of [1, 2, 3]) {
    const asked = await page.evaluate(async (name) => {
      const post = (path: string, body: Record<string, string>) =>
        fetch(`/rpc/${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(body) });
      const created = await (await post('keys/create', { name })).json();
      const request = await post('quota-requests/create', { key_id: created.key.id, per_hour: '2000', per_day: '20000', reason: 'a launch' });
      return (await request.json()).id as number;
    }, `Linked ${stamp} ${i}`);
    newest = `Linked ${stamp} ${i}`;
    expect(asked).toBeGreaterThan(0);
  }

  const adminPage = await (await browser.newContext({ viewport: { width: 1280, height: 720 } })).newPage();
  await signIn(adminPage, ADMIN);
  await adminPage.goto('/dashboard/notifications');
  await hydrated(adminPage);
  // Opened in the app (the router shows the page, the list arrives after it), not loaded.
  await adminPage.getByRole('link', { name: `Open: Quota request for “${newest}”` }).click();
  await expect(adminPage).toHaveURL(/\/admin\/quota-requests#request-\d+$/);
  const card = adminPage.getByTestId('admin-request').filter({ hasText: newest });
  await expect(card).toHaveAttribute('data-status', 'pending');
  await expect(card).toBeInViewport();
});

test('a decision made meanwhile shows on the usage page; revoking on the key page cancels the open request', async ({ page, browser }) => {
  await signIn(page, MERCHANT);
  const name = `Meanwhile ${Date.now()}`;
  const { row, keyId } = await createKey(page, name, 2);
  await row.getByRole('link', { name: 'usage' }).click();
  await expect(page.getByTestId('usage-title')).toContainText(name);
  const form = page.getByTestId('quota-requests');
  await expect(form.getByTestId('ask-per-hour')).toHaveAttribute('placeholder', '2');
  await form.getByTestId('ask-per-hour').fill('40');
  await form.getByTestId('ask-reason').fill('Meanwhile test');
  await form.getByRole('button', { name: 'Request increase' }).click();
  await expect(form.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');

  const adminPage = await (await browser.newContext()).newPage();
  await signIn(adminPage, ADMIN);
  await adminPage.goto('/admin/quota-requests');
  await hydrated(adminPage);
  const card = adminPage.getByTestId('admin-request').filter({ hasText: name });
  await card.getByTestId('approve').click();
  await expect(adminPage.getByTestId('admin-request').filter({ hasText: name })).toHaveAttribute('data-status', 'approved');

  // Without a reload: the gauge, the request's status and the form's figures follow.
  await expect(page.getByTestId('gauge-hour')).toContainText('of 40 requests');
  await expect(form.getByTestId('request-row').first()).toHaveAttribute('data-status', 'approved');
  await expect(form.getByTestId('ask-per-hour')).toHaveAttribute('placeholder', '40');

  // Another request, then the key is revoked from its page: the request shows as cancelled there.
  await form.getByTestId('ask-per-hour').fill('80');
  await form.getByTestId('ask-reason').fill('Meanwhile again');
  await form.getByRole('button', { name: 'Request increase' }).click();
  await expect(form.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');
  await page.goto(`/dashboard/developers/api-keys/${keyId}`);
  await hydrated(page);
  await page.getByTestId('revoke-key').getByTestId('revoke').click();
  await page.getByTestId('confirm-revoke').click();
  await expect(page.getByTestId('revoked')).toHaveText(`\u201c${name}\u201d is revoked: calls with it are refused.`);
  await expect(page.getByTestId('revoked')).toBeFocused();
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'cancelled');
  await expect(page.getByTestId('cancel-request')).toHaveCount(0);
});
