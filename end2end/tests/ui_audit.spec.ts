import { test, expect, Page } from '@playwright/test';
import { ADMIN, MERCHANT, createKey, demoKeyId, hydrated, signIn } from './helpers';

// Defects found by a browser audit of the dashboard (docs/notes.md, "UI audit"): each test
// checks what a user would notice.

const PHONE = { width: 390, height: 844 };

/** How far the page scrolls sideways (0 when it fits its viewport). */
async function sidewaysScroll(page: Page): Promise<number> {
  return page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
}

/** The element's right edge lies inside the viewport. */
async function expectOnScreen(page: Page, testId: string) {
  const box = (await page.getByTestId(testId).boundingBox())!;
  const width = page.viewportSize()!.width;
  expect(box.x + box.width, `${testId} runs off the screen`).toBeLessThanOrEqual(width);
}

async function expectFits(page: Page, path: string, ready: () => Promise<void>) {
  await page.goto(path);
  await hydrated(page);
  await ready();
  // The page itself, not an error in its place.
  await expect(page.getByTestId('error-panel')).toHaveCount(0);
  expect(await sidewaysScroll(page), `${path} scrolls sideways`).toBeLessThanOrEqual(0);
  await expectOnScreen(page, 'account-email');
  await expectOnScreen(page, 'bell');
  const signOut = page.getByRole('button', { name: 'Sign out', exact: true });
  const box = (await signOut.boundingBox())!;
  expect(box.x + box.width, `Sign out runs off the screen on ${path}`).toBeLessThanOrEqual(PHONE.width);
}

/** A name without break opportunities, as long as the form allows (100 characters). */
function longName(prefix: string) {
  const head = `${prefix}${Date.now()}`;
  return head + 'W'.repeat(100 - head.length);
}

test.describe('on a phone (390x844)', () => {
  test.use({ viewport: PHONE });

  test('no signed-in merchant page scrolls sideways; the key list reads as one block per key', async ({ page }) => {
    await signIn(page, MERCHANT);
    const { keyId } = await createKey(page, longName('Phone'));
    const list = '/dashboard/developers/api-keys';
    await expectFits(page, list, () => expect(page.getByTestId('key-row').first()).toBeVisible());
    // The key list does not scroll sideways either: each key's values show under their names.
    const scroller = page.locator('.table-scroll').filter({ has: page.locator('table.keys') });
    expect(await scroller.evaluate((el) => el.scrollWidth - el.clientWidth)).toBeLessThanOrEqual(0);
    const row = page.locator(`[data-key-id="${keyId}"]`);
    for (const cell of [row.getByTestId('key-quota'), row.locator('.badge')]) {
      const box = (await cell.boundingBox())!;
      expect(box.x + box.width).toBeLessThanOrEqual(PHONE.width);
    }
    // Each value is named (the table's header row is hidden on a phone).
    const label = await row.getByTestId('key-quota').evaluate((el) => getComputedStyle(el, '::before').content);
    expect(label).toBe('"Quota and use (UTC)"');

    await expectFits(page, `${list}/${keyId}`, () => expect(page.getByTestId('key-title')).toBeVisible());
    await expectFits(page, `${list}/${keyId}/usage`, async () => {
      await expect(page.getByTestId('usage-title')).toBeVisible();
      await expect(page.locator('#chart-requests canvas')).toHaveCount(1);
    });
    // A key with history: its tables have rows.
    const demo = demoKeyId();
    await expectFits(page, `${list}/${demo}/usage`, async () => {
      await expect(page.getByTestId('breakdown-table').locator('tbody tr').first()).toBeVisible();
      await expect(page.locator('#chart-breakdown canvas')).toHaveCount(1);
    });
    await expectFits(page, '/dashboard/notifications', () => expect(page.getByRole('heading', { level: 1, name: 'Notifications' })).toBeVisible());
    await expectFits(page, '/dashboard/account', () => expect(page.getByTestId('password')).toBeVisible());
    // The browsers signed in read as one block each, the date under its name.
    const sessions = page.locator('.table-scroll').filter({ has: page.getByTestId('session-list') });
    expect(await sessions.evaluate((el) => el.scrollWidth - el.clientWidth)).toBeLessThanOrEqual(0);
    const lastActive = page.getByTestId('session-row').first().locator('td').nth(2);
    expect(await lastActive.evaluate((el) => getComputedStyle(el, '::before').content)).toBe('"Last active"');
  });

  test('no admin page scrolls sideways', async ({ page }) => {
    await signIn(page, ADMIN);
    const { keyId } = await createKey(page, longName('Admin phone'));
    await expectFits(page, '/dashboard/developers/api-keys', () => expect(page.getByTestId('key-row').first()).toBeVisible());
    // A key's page offers an admin the form that sets its quota.
    await expectFits(page, `/dashboard/developers/api-keys/${keyId}`, () => expect(page.getByTestId('set-quota')).toBeVisible());
    await expectFits(page, '/admin', () => expect(page.getByTestId('admin-keys')).toBeVisible());
    // The lists of keys and of quota changes read as one block per row: nothing scrolls sideways.
    const sideways = (testId: string) =>
      page.locator('.table-scroll').filter({ has: page.getByTestId(testId) }).evaluate((el) => el.scrollWidth - el.clientWidth);
    expect(await sideways('admin-keys')).toBeLessThanOrEqual(0);
    await expectFits(page, '/admin/quota-requests', () => expect(page.getByTestId('set-directly')).toBeVisible());
    await expectFits(page, '/admin/quota-changes', () => expect(page.getByTestId('audit-trail')).toBeVisible());
    expect(await sideways('audit-trail')).toBeLessThanOrEqual(0);
    await expectFits(page, '/admin/mail', () => expect(page.getByTestId('mail-delivery')).toBeVisible());
    await expectFits(page, '/admin/accounts', () => expect(page.getByTestId('admin-accounts')).toBeVisible());
    // Accounts too: each one's status and switch stay on screen.
    expect(await sideways('admin-accounts')).toBeLessThanOrEqual(0);
    const you = page.getByTestId('account-row').filter({ hasText: ADMIN.email });
    const status = you.getByTestId('account-status');
    const box = (await status.boundingBox())!;
    expect(box.x + box.width, 'the account status runs off the screen').toBeLessThanOrEqual(PHONE.width);
    expect(await status.evaluate((el) => getComputedStyle(el.parentElement!, '::before').content)).toBe('"Status"');
  });
});

test('on a desktop the key list fits its card, long names and dates included', async ({ page }) => {
  await page.setViewportSize({ width: 1280, height: 800 });
  await signIn(page, MERCHANT);
  const { keyId } = await createKey(page, longName('Desktop'));
  await page.goto('/dashboard/developers/api-keys');
  await hydrated(page);
  const scroller = page.locator('.table-scroll').filter({ has: page.locator('table.keys') });
  expect(await scroller.evaluate((el) => el.scrollWidth - el.clientWidth)).toBeLessThanOrEqual(0);
  // Its "Revoke…" is on screen, and a date is not split at a hyphen ("2026-12-" / "01").
  const row = page.locator(`[data-key-id="${keyId}"]`);
  const revoke = (await row.getByTestId('revoke').boundingBox())!;
  expect(revoke.x + revoke.width).toBeLessThanOrEqual(1280);
  const created = row.locator('td.when').first();
  const lines = await created.evaluate((td) => {
    const range = document.createRange();
    range.selectNodeContents(td);
    return new Set(Array.from(range.getClientRects()).map((r) => Math.round(r.top))).size;
  });
  expect(lines).toBeLessThanOrEqual(2);
  expect(await created.innerText()).toMatch(/^\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2} UTC$/);
});

test('quota alert checkboxes are checkbox-sized and sit on the line of their label', async ({ page }) => {
  await signIn(page, MERCHANT);
  const { keyId } = await createKey(page, `Alerts layout ${Date.now()}`);
  await page.goto(`/dashboard/developers/api-keys/${keyId}`);
  await hydrated(page);
  for (const t of ['alert-50', 'alert-80', 'alert-100']) {
    const box = (await page.getByTestId(t).boundingBox())!;
    expect(box.width, `${t} is ${box.width}px wide`).toBeLessThan(40);
    const label = (await page.getByTestId(t).locator('xpath=..').boundingBox())!;
    // One line: the label is not taller than a line of text plus the box.
    expect(label.height).toBeLessThan(40);
  }
});

test('usage tables show exact request counts', async ({ page }) => {
  await signIn(page, MERCHANT);
  const demo = demoKeyId();
  await page.goto(`/dashboard/developers/api-keys/${demo}/usage`);
  await hydrated(page);
  // The seeded history has thousands of calls a day: "3,012", never "3.0k".
  for (const id of ['breakdown-table', 'top-endpoints']) {
    const cells = await page.getByTestId(id).locator('tbody td.num').allTextContents();
    expect(cells.length).toBeGreaterThan(0);
    expect(cells.filter((c) => /^\d{1,3}(,\d{3})+$/.test(c.trim())).length, `${id}: ${cells.join(' | ')}`).toBeGreaterThan(0);
    expect(cells.filter((c) => /\d[kMG]$/.test(c.trim())), `${id} rounds counts`).toEqual([]);
  }
});

test('a bad CSV range is explained in the page instead of leaving it', async ({ page }) => {
  await signIn(page, MERCHANT);
  const demo = demoKeyId();
  const usage = `/dashboard/developers/api-keys/${demo}/usage`;
  await page.goto(usage);
  await hydrated(page);
  await page.evaluate(() => ((window as any).__stayed = true));
  // The date fields carry the bounds for the browser's date picker.
  await expect(page.getByTestId('csv-to')).toHaveAttribute('min', /^\d{4}-\d{2}-\d{2}$/);
  await page.getByTestId('csv-from').fill('2026-05-10');
  await page.getByTestId('csv-to').fill('2026-05-01');
  await expect(page.getByTestId('csv-to')).toHaveAttribute('min', '2026-05-10');
  await page.getByRole('button', { name: 'Export CSV' }).click();
  await expect(page.getByTestId('csv-error')).toContainText('must not be after');
  // Tied to the date to correct: screen readers hear the message on that field.
  await expect(page.getByTestId('csv-to')).toHaveAttribute('aria-invalid', 'true');
  await expect(page.getByTestId('csv-to')).toHaveAccessibleDescription(/must not be after/);
  await expect(page.getByTestId('csv-from')).not.toHaveAttribute('aria-invalid', 'true');
  await page.getByTestId('csv-from').fill('2025-01-01');
  // Editing a date clears the error and its marks.
  await expect(page.getByTestId('csv-error')).toHaveCount(0);
  await expect(page.getByTestId('csv-to')).not.toHaveAttribute('aria-invalid', 'true');
  await expect(page.getByTestId('csv-to')).not.toHaveAttribute('aria-describedby', /./);
  await page.getByTestId('csv-to').fill('2026-05-01');
  await page.getByRole('button', { name: 'Export CSV' }).click();
  await expect(page.getByTestId('csv-error')).toContainText('at most 366 days');
  // Still the same page, not a JSON error.
  expect(new URL(page.url()).pathname).toBe(usage);
  expect(await page.evaluate(() => (window as any).__stayed)).toBe(true);
  await expect(page.getByTestId('usage-title')).toBeVisible();
});

test('every page has its own title', async ({ page }) => {
  await signIn(page, MERCHANT);
  await expect(page).toHaveTitle('API keys · keymeter');
  const demo = demoKeyId();
  await page.goto(`/dashboard/developers/api-keys/${demo}`);
  await hydrated(page);
  await expect(page).toHaveTitle('Demo key · API keys · keymeter');
  await page.goto(`/dashboard/developers/api-keys/${demo}/usage`);
  await hydrated(page);
  await expect(page).toHaveTitle('Usage of Demo key · keymeter');
  // Client-side navigation changes it too.
  await page.getByTestId('usage-title').waitFor();
  await page.locator('.crumbs').getByRole('link', { name: 'API keys' }).click();
  await expect(page).toHaveTitle('API keys · keymeter');
  await page.goto('/dashboard/notifications');
  await expect(page).toHaveTitle('Notifications · keymeter');
});

test('admin pages have their own titles', async ({ page }) => {
  await signIn(page, ADMIN);
  for (const [path, title] of [
    ['/admin', 'All API keys · keymeter'],
    ['/admin/quota-requests', 'Quota requests · keymeter'],
    ['/admin/quota-changes', 'Quota changes · keymeter'],
    ['/admin/mail', 'Mail · keymeter'],
    ['/admin/accounts', 'Accounts · keymeter'],
  ]) {
    await page.goto(path);
    await hydrated(page);
    await expect(page).toHaveTitle(title);
  }
  await page.context().clearCookies();
  await page.goto('/login');
  await expect(page).toHaveTitle('Sign in · keymeter');
});

test('an action after the session ended offers signing in again, back to the same page', async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await signIn(page, MERCHANT);
  const { keyId } = await createKey(page, `Ended ${Date.now()}`);
  const usage = `/dashboard/developers/api-keys/${keyId}/usage`;
  await page.goto(usage);
  await hydrated(page);
  // Signed out in another tab of the same browser.
  const other = await context.newPage();
  await other.goto('/dashboard/developers/api-keys');
  await other.getByRole('button', { name: 'Sign out', exact: true }).click();
  await expect(other).toHaveURL(/\/login/);

  await page.getByTestId('ask-per-hour').fill('5000');
  await page.getByTestId('ask-reason').fill('a launch');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('ask-error')).toHaveText('Your session has ended: sign in again.');
  const again = page.getByTestId('sign-in-again').first();
  await expect(again).toHaveAttribute('href', `/login?next=${usage}`);
  await again.click();
  await page.getByLabel('Email').fill(MERCHANT.email);
  await page.getByLabel('Password').fill(MERCHANT.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(new RegExp(`${usage}$`));
  await context.close();
});
