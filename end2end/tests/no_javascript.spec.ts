import { test, expect, Page } from '@playwright/test';
import { ADMIN, MERCHANT, cli, resetLinkPath, sql } from './helpers';

// Without JavaScript every form posts straight to its server function; a failure must come back
// to the page the form is on, with its message shown there (not the server function's JSON).
test.use({ javaScriptEnabled: false });

async function submitSignIn(page: Page, email: string, password: string) {
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function signInWithoutScripts(page: Page, who: { email: string; password: string }) {
  await page.goto('/login');
  await submitSignIn(page, who.email, who.password);
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys$/);
  await expect(page.getByTestId('account-email')).toHaveText(who.email);
}

/** Creates a key through the form (the list shows it after the post) and opens its page. */
async function createKeyAndOpen(page: Page, name: string) {
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  const row = page.getByTestId('key-row').filter({ hasText: name });
  await expect(row).toBeVisible();
  await row.getByRole('link', { name, exact: true }).click();
  await expect(page.getByTestId('key-title')).toHaveText(name);
}

test('a wrong password shows its message on the sign-in page; then signing in lands on the key list', async ({ page }) => {
  await page.goto('/login');
  await submitSignIn(page, MERCHANT.email, 'not the password');
  await expect(page).toHaveURL(/\/login\?/);
  await expect(page.getByTestId('login-error')).toHaveText('Invalid email or password.');
  await expect(page.locator('body')).not.toContainText('"message"');
  // The address typed comes back (from a cookie of the sign-in page, not in its address); the
  // password does not.
  await expect(page.getByLabel('Email')).toHaveValue(MERCHANT.email);
  await expect(page.getByLabel('Password')).toHaveValue('');
  expect(page.url()).not.toContain('merchant');

  // From the page that shows the error (its URL carries it), the right password signs in.
  await submitSignIn(page, MERCHANT.email, MERCHANT.password);
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys$/);
  await expect(page.getByTestId('account-email')).toHaveText(MERCHANT.email);
  await expect(page.getByRole('heading', { name: 'Your keys' })).toBeVisible();
  await expect(page.getByTestId('login-error')).toHaveCount(0);
  // Signed in, the kept address is forgotten.
  expect((await page.context().cookies()).map((c) => c.name)).not.toContain('km_sign_in_email');
});

test('dashboard forms show their errors on the page they return to', async ({ page }) => {
  await signInWithoutScripts(page, MERCHANT);

  // A name of spaces passes the browser's `required` but not the server.
  await page.getByTestId('key-name').fill('   ');
  await page.getByRole('button', { name: 'Create key' }).click();
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys\?/);
  await expect(page.getByRole('alert')).toHaveText('Give the key a name.');
  await expect(page.getByTestId('key-name')).toHaveAccessibleDescription('Give the key a name.');
  // What was typed comes back with the error (passwords never do).
  await expect(page.getByTestId('key-name')).toHaveValue('   ');

  const name = `No script ${Date.now()}`;
  await createKeyAndOpen(page, name);
  const keyUrl = page.url();

  // A reason with markup in it comes back as text, not as markup.
  const reason = 'Launch </textarea><b id="injected">x</b> & more';
  await page.getByTestId('ask-per-hour').fill('lots');
  await page.getByTestId('ask-reason').fill(reason);
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('ask-error')).toHaveText('The hourly limit must be a whole number.');
  // The page comes back at the form, its message in view, not at the top of the page.
  await expect(page).toHaveURL(/#quota-requests$/);
  await expect(page.getByTestId('ask-error')).toBeInViewport();
  // The page the server rendered ties the error to its field too.
  await expect(page.getByTestId('ask-per-hour')).toHaveAttribute('aria-invalid', 'true');
  await expect(page.getByTestId('ask-per-hour')).toHaveAccessibleDescription('The hourly limit must be a whole number.');
  expect(page.url().startsWith(keyUrl)).toBe(true);
  await expect(page.getByTestId('key-title')).toHaveText(name);
  // The page was loaded afresh, with what was typed: only the wrong number needs typing again.
  await expect(page.getByTestId('ask-per-hour')).toHaveValue('lots');
  await expect(page.getByTestId('ask-reason')).toHaveValue(reason);
  await expect(page.locator('#injected')).toHaveCount(0);

  // Corrected, the request goes through, the page says so and the error is gone.
  await page.getByTestId('ask-per-hour').fill('5000');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');
  await expect(page.getByTestId('request-done')).toHaveText('Request sent. You will be told when an admin decides.');
  await expect(page.getByTestId('request-done')).toBeInViewport();
  await expect(page.getByTestId('ask-error')).toHaveCount(0);

  // Renaming: a name of spaces comes back as an error on the name; a good one renames the key.
  await page.getByTestId('rename-name').fill('   ');
  await page.getByTestId('rename-save').click();
  await expect(page.getByTestId('rename-error')).toHaveText('Give the key a name.');
  await expect(page.getByTestId('rename-name')).toHaveAccessibleDescription('Give the key a name.');
  await expect(page.getByTestId('rename-name')).toHaveValue('   ');
  await expect(page.getByTestId('key-title')).toHaveText(name);
  // The request's confirmation was for the post before.
  await expect(page.getByTestId('request-done')).toHaveCount(0);
  await page.getByTestId('rename-name').fill(`${name} (renamed)`);
  await page.getByTestId('rename-save').click();
  await expect(page.getByTestId('key-title')).toHaveText(`${name} (renamed)`);
  await expect(page).toHaveTitle(`${name} (renamed) · API keys · keymeter`);
  await expect(page.getByTestId('renamed')).toHaveText(`Renamed to “${name} (renamed)”.`);
  await expect(page.getByTestId('rename-name')).toHaveValue(`${name} (renamed)`);
  await expect(page.getByTestId('rename-error')).toHaveCount(0);

  // Alert choices: saved, said so, and the rename is not confirmed again.
  await expect(page.getByTestId('alert-50')).toBeChecked();
  await page.getByTestId('alert-50').uncheck();
  await page.getByTestId('alert-save').click();
  await expect(page.getByTestId('alert-saved')).toHaveText('Saved.');
  await expect(page.getByTestId('alert-50')).not.toBeChecked();
  await expect(page.getByTestId('renamed')).toHaveCount(0);
});

test('an admin denying without a note sees why on the requests page', async ({ page, browser }) => {
  await signInWithoutScripts(page, MERCHANT);
  const name = `Deny me ${Date.now()}`;
  await createKeyAndOpen(page, name);
  const keyUrl = page.url();
  await page.getByTestId('ask-per-hour').fill('5000');
  await page.getByTestId('ask-reason').fill('More please');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');

  const admin = await (await browser.newContext({ javaScriptEnabled: false })).newPage();
  await signInWithoutScripts(admin, ADMIN);
  await admin.goto('/admin/quota-requests');
  const card = admin.getByTestId('admin-request').filter({ hasText: name });
  // A note of spaces passes the browser's `required` but not the server.
  await card.getByTestId('deny-note').fill(' ');
  await card.getByTestId('deny').click();
  // The page comes back with the error on the request's own card, scrolled to it.
  await expect(card.getByTestId('decision-error')).toHaveText('Say why the request is denied.');
  await expect(admin).toHaveURL(/#request-\d+$/);
  await expect(card.getByTestId('decision-error')).toBeInViewport();
  await expect(admin.getByTestId('decision-error')).toHaveCount(1);
  await expect(card).toHaveAttribute('data-status', 'pending');

  // Approving numbers that are not numbers: the card says so and keeps what was typed.
  await card.locator('input[name="per_hour"]').fill('many');
  await card.locator('input[name="note"]').first().fill('for the launch');
  await card.getByTestId('approve').click();
  await expect(card.getByTestId('decision-error')).toHaveText('The hourly limit must be a whole number.');
  await expect(card.locator('input[name="per_hour"]')).toHaveValue('many');
  await expect(card.locator('input[name="note"]').first()).toHaveValue('for the launch');
  await expect(card.getByTestId('deny-note')).toHaveValue('');

  // Denied with a reason: the page says so.
  await card.getByTestId('deny-note').fill('Not before the audit');
  await card.getByTestId('deny').click();
  await expect(admin.getByTestId('decision-done')).toHaveText('Denied. The owner is told.');
  // The decided card moves down the page; the confirmation on top is what comes into view.
  await expect(admin).toHaveURL(/#decisions$/);
  await expect(admin.getByTestId('decision-done')).toBeInViewport();
  await expect(card).toHaveAttribute('data-status', 'denied');
  await expect(admin.getByTestId('decision-error')).toHaveCount(0);

  // Setting the key's quota directly, on its page: a bad number is explained there, a good one
  // applies and shows.
  await admin.goto(keyUrl);
  await expect(admin.getByTestId('key-title')).toHaveText(name);
  await admin.getByTestId('set-per-hour').fill('0');
  await admin.getByTestId('set-reason').fill('no-script test');
  await admin.getByRole('button', { name: 'Set quota' }).click();
  await expect(admin.getByRole('alert').filter({ hasText: 'The hourly limit must be positive.' })).toBeVisible();
  await expect(admin.getByTestId('set-per-hour')).toHaveAttribute('aria-invalid', 'true');
  await expect(admin.getByTestId('set-reason')).not.toHaveAttribute('aria-invalid', 'true');
  await expect(admin.getByTestId('key-title')).toHaveText(name);
  await expect(admin.getByTestId('set-per-hour')).toHaveValue('0');
  await expect(admin.getByTestId('set-reason')).toHaveValue('no-script test');
  await admin.getByTestId('set-per-hour').fill('4000');
  await admin.getByRole('button', { name: 'Set quota' }).click();
  await expect(admin.locator('dl.facts')).toContainText('4,000 requests per hour');
  await expect(admin.getByTestId('set-done')).toHaveText("Quota set; it applies to the key's next request.");
  await expect(admin.getByRole('alert')).toHaveCount(0);
});

test('a key is rolled without JavaScript; its page shows the new secret once', async ({ page, request }) => {
  await signInWithoutScripts(page, MERCHANT);
  const name = `No script roll ${Date.now()}`;
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  const old = (await page.getByTestId('new-secret').textContent())!.trim();
  await page.getByTestId('key-row').filter({ hasText: name }).getByRole('link', { name, exact: true }).click();
  await expect(page.getByTestId('key-title')).toHaveText(name);

  // "at once" is the default; "Roll key…" opens its question by itself (a <details>). Without
  // a script the question cannot follow the choice: it refers to it.
  await page.getByTestId('roll-key').click();
  await expect(page.locator('[id^="roll-question-"]')).toHaveText(`Give “${name}” a new secret? It is shown once; the current one stops working when chosen above.`);
  await page.getByTestId('confirm-roll').click();
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys\/[0-9a-f-]+\?rolled=/);
  const fresh = (await page.getByTestId('new-secret').textContent())!.trim();
  expect(fresh).toMatch(/^km_live_[0-9A-Za-z]{40}$/);
  await expect(page.getByTestId('previous-secret')).toContainText('stopped working');
  expect((await request.get('/api/v1/ping', { headers: { 'X-API-Key': fresh } })).status()).toBe(200);
  expect((await request.get('/api/v1/ping', { headers: { 'X-API-Key': old } })).status()).toBe(401);
  await page.reload();
  await expect(page.getByTestId('secret-gone')).toBeVisible();
  await expect(page.locator('body')).not.toContainText(fresh);

  // Rolled again with an hour of overlap, the previous secret is stopped by hand.
  await page.getByTestId('old-secret-hours').selectOption('1');
  await page.getByTestId('roll-key').click();
  await page.getByTestId('confirm-roll').click();
  await expect(page.getByTestId('overlap')).toContainText(`The previous secret ${fresh.slice(0, 14)}… keeps working until`);
  expect((await request.get('/api/v1/ping', { headers: { 'X-API-Key': fresh } })).status()).toBe(200);
  await page.getByTestId('end-overlap').click();
  await page.getByTestId('confirm-end-overlap').click();
  await expect(page.getByTestId('overlap-ended')).toHaveText('The previous secret no longer works: calls with it are refused.');
  await expect(page.getByTestId('overlap')).toHaveCount(0);
  // The roll's one-time token left the address: the page does not read it again.
  await expect(page).not.toHaveURL(/rolled=/);
  await expect(page.getByTestId('secret-gone')).toHaveCount(0);
  expect((await request.get('/api/v1/ping', { headers: { 'X-API-Key': fresh } })).status()).toBe(401);
});

test('a key is revoked and a request cancelled without JavaScript', async ({ page }) => {
  await signInWithoutScripts(page, MERCHANT);
  const name = `No script revoke ${Date.now()}`;
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  const row = page.getByTestId('key-row').filter({ hasText: name });
  await expect(row).toHaveAttribute('data-status', 'active');
  // The new secret is shown once, on the list the form returns to; a reload does not show it again.
  const secret = (await page.getByTestId('new-secret').textContent())!.trim();
  expect(secret).toMatch(/^km_live_[0-9A-Za-z]{40}$/);
  await expect(page.getByTestId('try-it')).toContainText(secret);
  await page.reload();
  await expect(page.getByTestId('secret-gone')).toBeVisible();
  await expect(page.locator('body')).not.toContainText(secret);
  // "Revoke…" opens its confirmation by itself (a <details>); confirming posts the form.
  await row.getByTestId('revoke').click();
  await row.getByTestId('confirm-revoke').click();
  // Back on the list, which says what happened.
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys\?done=revoked#revoke-key$/);
  await expect(page.getByTestId('revoked')).toHaveText('The key is revoked: calls with it are refused.');
  await expect(row).toHaveAttribute('data-status', 'revoked');

  const other = `No script cancel ${Date.now()}`;
  await createKeyAndOpen(page, other);
  await page.getByTestId('ask-per-hour').fill('5000');
  await page.getByTestId('ask-reason').fill('Launch');
  await page.getByRole('button', { name: 'Request increase' }).click();
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'pending');
  await page.getByTestId('cancel-request').click();
  await expect(page.getByTestId('key-title')).toHaveText(other);
  await expect(page.getByTestId('request-row').first()).toHaveAttribute('data-status', 'cancelled');
  await expect(page.getByTestId('request-done')).toHaveText('Request cancelled.');
  // Revoked from its own page: back on that page, which names the key.
  await page.getByTestId('revoke-key').getByTestId('revoke').click();
  await page.getByTestId('confirm-revoke').click();
  await expect(page.getByTestId('key-title')).toHaveText(other);
  await expect(page.getByTestId('revoked')).toHaveText(`\u201c${other}\u201d is revoked: calls with it are refused.`);
});

test('an admin reads a message on the mail page without JavaScript', async ({ page }) => {
  const subject = `Plain reading ${Date.now()}`;
  sql(`INSERT INTO outbound_emails (to_address, subject, text_body, html_body)
       VALUES ('ann@example.com', '${subject}', 'the plain part', '<p>the html part</p>')`);
  await signInWithoutScripts(page, ADMIN);
  await page.goto('/admin/mail');
  const item = page.getByTestId('mail-item').filter({ hasText: subject });
  await item.locator('summary').click();
  await item.getByRole('link', { name: 'Read it' }).click();
  await expect(page).toHaveURL(/\/admin\/mail\?open=\d+$/);
  const opened = page.getByTestId('mail-item').filter({ hasText: subject });
  await expect(opened.locator('pre')).toHaveText('the plain part');
  await expect(opened.frameLocator('iframe.mail-html').getByText('the html part')).toBeVisible();
});

test('signing out everywhere else works without JavaScript', async ({ page, browser }) => {
  const who = { email: `nojs-sessions-${Date.now()}@keymeter.local`, password: 'a sessions password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  const other = await (await browser.newContext({ javaScriptEnabled: false })).newPage();
  await signInWithoutScripts(other, who);
  await signInWithoutScripts(page, who);

  await page.goto('/dashboard/account');
  await expect(page.getByTestId('session-row')).toHaveCount(2);
  await page.getByRole('button', { name: 'Sign out everywhere else' }).click();
  await expect(page).toHaveURL(/\/dashboard\/account\?signed_out=1$/);
  await expect(page.getByTestId('others-signed-out')).toHaveText('Signed out of 1 other session.');
  await expect(page.getByTestId('session-row')).toHaveCount(1);

  await other.goto('/dashboard/developers/api-keys');
  await expect(other).toHaveURL(/\/login\?next=/);
});

test('an admin disables and enables an account without JavaScript', async ({ page }) => {
  const who = { email: `nojs-disable-${Date.now()}@keymeter.local`, password: 'a disabled password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  await signInWithoutScripts(page, ADMIN);
  await page.goto(`/admin/accounts?q=${encodeURIComponent(who.email)}`);
  const row = page.getByTestId('account-row').filter({ hasText: who.email });
  await row.getByTestId('disable-account').click();
  await row.getByRole('button', { name: `Disable ${who.email}` }).click();
  await expect(page).toHaveURL(/\/admin\/accounts\?q=/);
  await expect(row.getByTestId('account-status')).toHaveText('disabled');
  await row.getByRole('button', { name: `Enable ${who.email}` }).click();
  await expect(row.getByTestId('account-status')).toHaveText('active');
});

test('a forgotten password is replaced without JavaScript', async ({ page }) => {
  const who = { email: `reset-nojs-${Date.now()}@keymeter.local`, password: 'the forgotten password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  await page.goto('/login');
  await page.getByRole('link', { name: 'Forgot your password?' }).click();
  await page.getByLabel('Email').fill(who.email);
  await page.getByRole('button', { name: 'Mail me a link' }).click();
  await expect(page).toHaveURL(/\/password-reset\?asked=1$/);
  await expect(page.getByTestId('reset-asked')).toContainText('a link is on its way');

  await page.goto(await resetLinkPath(who.email));
  await page.getByLabel('New password (at least 10 characters)').fill('the chosen password');
  await page.getByLabel('New password again').fill('not the same one');
  await page.getByRole('button', { name: 'Set the password' }).click();
  await expect(page.getByTestId('choose-error')).toHaveText('The two passwords differ.');
  await expect(page.locator('body')).not.toContainText('"message"');

  await page.getByLabel('New password (at least 10 characters)').fill('the chosen password');
  await page.getByLabel('New password again').fill('the chosen password');
  await page.getByRole('button', { name: 'Set the password' }).click();
  await expect(page).toHaveURL(/\/login\?password_reset=1$/);
  await expect(page.getByTestId('password-was-reset')).toBeVisible();
  await submitSignIn(page, who.email, 'the chosen password');
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys$/);
  await expect(page.getByTestId('account-email')).toHaveText(who.email);
});

test('the monthly summary choice is saved and confirmed without JavaScript', async ({ page }) => {
  await signInWithoutScripts(page, MERCHANT);
  await page.goto('/dashboard/notifications');
  const box = page.getByTestId('monthly-summary-on');
  const wasOn = await box.isChecked();
  await box.setChecked(!wasOn);
  await page.getByTestId('monthly-summary-save').click();
  await expect(page.getByTestId('monthly-summary-saved')).toHaveText(
    wasOn ? 'Saved: no monthly summary.' : 'Saved: the summary comes after each month.',
  );
  await expect(box).toBeChecked({ checked: !wasOn });
  // Back as it was, confirmed again.
  await box.setChecked(wasOn);
  await page.getByTestId('monthly-summary-save').click();
  await expect(page.getByTestId('monthly-summary-saved')).toHaveText(
    wasOn ? 'Saved: the summary comes after each month.' : 'Saved: no monthly summary.',
  );
  await expect(box).toBeChecked({ checked: wasOn });
});

test('the usage page without JavaScript: links choose the history and range, and nothing claims to be live', async ({ page }) => {
  await signInWithoutScripts(page, MERCHANT);
  await page.getByTestId('key-row').filter({ hasText: 'Demo key' }).getByRole('link', { name: 'usage' }).click();
  await expect(page.getByTestId('usage-title')).toContainText('Demo key');
  // The charts need the script: a note says so instead of empty boxes, and the figures are
  // as of the page's loading, not live.
  await expect(page.getByText('The charts need JavaScript.')).toBeVisible();
  await expect(page.locator('#chart-requests')).toBeHidden();
  await expect(page.getByTestId('live-updated')).toContainText('as of', { useInnerText: true });
  await expect(page.getByTestId('live-updated')).not.toContainText('live', { useInnerText: true });

  await page.getByRole('link', { name: 'Weekly · 12 ISO weeks' }).click();
  await expect(page).toHaveURL(/\?history=weekly&top=30#history$/);
  await expect(page.getByTestId('breakdown-table')).toContainText(/week \d{4}-W\d{2}/);
  await expect(page.getByTestId('breakdown-table')).toBeInViewport();
  await page.getByRole('link', { name: '90 days' }).click();
  await expect(page.getByRole('link', { name: '90 days' })).toHaveAttribute('aria-current', 'true');
  await expect(page.getByTestId('top-endpoints')).toContainText('/api/v1/status/{code}');
  // The history chosen before stays chosen.
  await expect(page.getByTestId('breakdown-table')).toContainText(/week \d{4}-W\d{2}/);

  // A chosen range is a form that brings the page back with it.
  await page.getByRole('link', { name: 'Chosen range' }).click();
  const day = (ago: number) => new Date(Date.now() - ago * 86_400_000).toISOString().slice(0, 10);
  await page.getByTestId('range-from').fill(day(2));
  await page.getByTestId('range-to').fill(day(1));
  await page.getByTestId('range-per').selectOption('hour');
  await page.getByRole('button', { name: 'Show' }).click();
  await expect(page).toHaveURL(new RegExp(`history=range&from=${day(2)}&to=${day(1)}&per=hour&top=90#history$`));
  await expect(page.getByTestId('breakdown-table').locator('tbody tr')).toHaveCount(48);
  await expect(page.getByTestId('breakdown-table')).toBeInViewport();
  await expect(page.getByRole('link', { name: '90 days' })).toHaveAttribute('aria-current', 'true');
});

test('notifications are marked read with a button without JavaScript; a new secret has no dead Copy button', async ({ page }) => {
  const who = { email: `nojs-bell-${Date.now()}@keymeter.local`, password: 'a notified password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  await signInWithoutScripts(page, who);
  // A key, and the quota change the operator makes to it, notify its owner.
  await page.getByTestId('key-name').fill('Bell key');
  await page.getByRole('button', { name: 'Create key' }).click();
  await expect(page.getByTestId('new-secret')).toBeVisible();
  await expect(page.getByTestId('copy-secret')).toBeHidden();
  const keyId = await page.getByTestId('key-row').first().getAttribute('data-key-id');
  cli(['quota', 'set', '--key', keyId!, '--per-hour', '20', '--per-day', '200', '--reason', 'bell test']);
  await page.goto('/dashboard/notifications');
  await expect(page.getByTestId('unread')).toBeVisible();
  await page.getByTestId('mark-read').click();
  await expect(page).toHaveURL(/#notification-list$/);
  await expect(page.getByTestId('marked-read')).toHaveText('Marked read.');
  await expect(page.getByTestId('unread')).toHaveCount(0);
  await expect(page.getByTestId('mark-read')).toHaveCount(0);
});
