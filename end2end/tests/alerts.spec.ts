import { test, expect } from '@playwright/test';
import { ADMIN, MERCHANT, createKey, hydrated, settled, signIn, sql } from './helpers';

test('quota alerts reach the bell always and email only at the thresholds the owner chose', async ({ page, browser, request }) => {
  await signIn(page, MERCHANT);
  const name = `Alerting ${Date.now()}`;
  const { secret, row, keyId } = await createKey(page, name, 2);

  // Only the 100% alert emails.
  await row.getByRole('link', { name, exact: true }).click();
  await expect(page.getByTestId('key-title')).toHaveText(name);
  await expect(page.getByTestId('alert-50')).toBeChecked();
  await page.getByTestId('alert-50').uncheck();
  await page.getByTestId('alert-80').uncheck();
  await page.getByTestId('alert-save').click();
  await expect(page.getByTestId('alert-saved')).toBeVisible();
  await page.reload();
  await hydrated(page);
  await expect(page.getByTestId('alert-50')).not.toBeChecked();
  await expect(page.getByTestId('alert-100')).toBeChecked();

  const call = () => request.get('/api/v1/ping', { headers: { Authorization: `Bearer ${secret}` } });
  expect((await call()).status()).toBe(200);
  expect((await call()).status()).toBe(200);

  // All three thresholds in the app.
  await settled(page, 'notifications/list', (list) => list.filter((n: any) => n.title.startsWith(name)).length === 3);
  await page.goto('/dashboard/notifications');
  await hydrated(page);
  await expect(page.getByTestId('notifications')).toContainText(`${name}: hourly quota used up`);
  await expect(page.getByTestId('notifications')).toContainText(`${name}: 80% of the hourly quota used`);
  await expect(page.getByTestId('notifications')).toContainText(`${name}: 50% of the hourly quota used`);

  // One email, readable by admins at /admin/mail.
  const adminPage = await (await browser.newContext()).newPage();
  await signIn(adminPage, ADMIN);
  await settled(adminPage, 'admin/mail', (box) =>
    box.messages.some((m: any) => m.subject === `${name}: hourly quota used up` && m.sent_at));
  await adminPage.goto('/admin/mail');
  await hydrated(adminPage);
  await expect(adminPage.getByTestId('mail-subject').filter({ hasText: `${name}: hourly quota used up` })).toHaveCount(1);
  await expect(adminPage.getByTestId('mail-subject').filter({ hasText: `${name}: 80%` })).toHaveCount(0);
  await expect(adminPage.getByTestId('mail-delivery')).toContainText('mail folder');
  const item = adminPage.getByTestId('mail-item').filter({ hasText: `${name}: hourly quota used up` });
  // A message's HTML part is drawn when it is opened, not for every message up front.
  await expect(adminPage.locator('iframe.mail-html')).toHaveCount(0);
  await item.locator('summary').click();
  await expect(item.locator('iframe.mail-html')).toHaveCount(1);
  const link = item.frameLocator('iframe.mail-html').getByRole('link').first();
  await expect(link).toBeVisible();
  await expect(item.locator('pre')).toContainText(`/dashboard/developers/api-keys/${keyId}/usage`);
  // A link in the preview opens in a tab of its own (the app refuses to show in a frame), and
  // the preview keeps the message.
  const [opened] = await Promise.all([adminPage.context().waitForEvent('page'), link.click()]);
  await opened.waitForLoadState();
  expect(opened.url()).toContain(`/dashboard/developers/api-keys/${keyId}/usage`);
  await opened.close();
  await expect(link).toBeVisible();
  await adminPage.screenshot({ path: 'test-results/admin-mail.png', fullPage: true });
});

test('an email given up is marked on the mail page, and an admin can send it again', async ({ page }) => {
  // A recipient no mail server can take: refused for good on the first try.
  const subject = `Undeliverable ${Date.now()}`;
  sql(`INSERT INTO outbound_emails (to_address, subject, text_body, html_body)
       VALUES ('not an address', '${subject}', 'text', '<p>html</p>')`);
  await signIn(page, ADMIN);
  const givenUp = (attempts: number) => (box: any) =>
    box.failed > 0 && box.messages.some((m: any) => m.subject === subject && m.failed_at && m.attempts === attempts);
  await settled(page, 'admin/mail', givenUp(1));
  await page.goto('/admin/mail');
  await hydrated(page);
  await expect(page.getByTestId('mail-counts')).toContainText('given up');
  const item = page.getByTestId('mail-item').filter({ hasText: subject });
  await expect(item.getByTestId('mail-status')).toHaveText('given up');
  await item.locator('summary').click();
  await expect(item).toContainText('after 1 attempt(s): invalid recipient');
  await item.getByTestId('send-again').click();
  // Queued again, tried again, and (the address being what it is) given up again.
  await settled(page, 'admin/mail', givenUp(2));
  await page.reload();
  await hydrated(page);
  const again = page.getByTestId('mail-item').filter({ hasText: subject });
  await again.locator('summary').click();
  await expect(again).toContainText('after 2 attempt(s)');
});

test('the monthly summary is stopped from the link in its email and turned on again on the notifications page', async ({ page, browser }) => {
  const gets = () => sql(`SELECT monthly_summary FROM users WHERE email = '${MERCHANT.email}'`).trim();
  const token = sql(`SELECT email_token FROM users WHERE email = '${MERCHANT.email}'`).trim();
  // The link, opened from a mail reader: no session, and the page needs no script. Whoever
  // holds the link sees the address only in part.
  const reader = await (await browser.newContext({ javaScriptEnabled: false })).newPage();
  await reader.goto(`/email/unsubscribe/${token}`);
  await expect(reader.locator('main')).toContainText('Stop the monthly usage summary sent to me***@keymeter.local?');
  expect(gets()).toBe('t');
  await reader.getByTestId('stop-summary').click();
  await expect(reader.getByTestId('summary-stopped')).toHaveText('The monthly usage summary to me***@keymeter.local is stopped.');
  expect(gets()).toBe('f');
  await reader.goto(`/email/unsubscribe/${token}`);
  await expect(reader.getByTestId('summary-stopped')).toHaveText('The monthly usage summary to me***@keymeter.local is already stopped.');

  await signIn(page, MERCHANT);
  await page.goto('/dashboard/notifications');
  await hydrated(page);
  await expect(page.getByTestId('monthly-summary-on')).not.toBeChecked();
  await page.getByTestId('monthly-summary-on').check();
  await page.getByTestId('monthly-summary-save').click();
  await expect(page.getByTestId('monthly-summary-saved')).toHaveText('Saved: the summary comes after each month.');
  await expect(page.getByTestId('monthly-summary-save')).toBeFocused();
  expect(gets()).toBe('t');
  await page.reload();
  await hydrated(page);
  await expect(page.getByTestId('monthly-summary-on')).toBeChecked();
});
