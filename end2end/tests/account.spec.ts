import { test, expect } from '@playwright/test';
import { ADMIN, cli, hydrated, resetLinkPath, signIn, watchForBrokenBundle } from './helpers';

test('a merchant changes their password from the account page; their other session ends', async ({ page, browser }) => {
  // An account of this test's own: the demo accounts' passwords belong to the other tests.
  const who = { email: `pw-${Date.now()}@keymeter.local`, password: 'the first password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  const other = await browser.newPage();
  await signIn(other, who);
  await signIn(page, who);

  await page.getByTestId('account-email').click();
  await expect(page).toHaveURL(/\/dashboard\/account$/);
  await expect(page.getByTestId('account-address')).toHaveText(who.email);

  // A wrong current password: the message is tied to that field, and nothing changes.
  await page.getByLabel('Current password').fill('not my password');
  await page.getByLabel('New password (at least 10 characters)').fill('the second password');
  await page.getByLabel('New password again').fill('the second password');
  await page.getByRole('button', { name: 'Change password' }).click();
  await expect(page.getByTestId('password-error')).toHaveText('That is not your current password.');
  await expect(page.getByLabel('Current password')).toHaveAccessibleDescription('That is not your current password.');

  await page.getByLabel('Current password').fill(who.password);
  await page.getByRole('button', { name: 'Change password' }).click();
  await expect(page.getByTestId('password-changed')).toHaveText('Password changed. Your other sessions were signed out.');
  await expect(page.getByTestId('password-error')).toHaveCount(0);
  await expect(page.getByLabel('Current password')).toHaveValue('');
  await expect(page.getByLabel('Current password')).not.toHaveAttribute('aria-invalid', 'true');

  // The other browser is signed out at its next page; this one stays signed in.
  await other.goto('/dashboard/developers/api-keys');
  await expect(other).toHaveURL(/\/login\?next=/);
  await page.goto('/dashboard/developers/api-keys');
  await hydrated(page);
  await expect(page.getByTestId('account-email')).toHaveText(who.email);

  // Signing in again takes the new password.
  await signIn(other, { ...who, password: 'the second password' });
});

test('a merchant sees where they are signed in and signs out everywhere else', async ({ page, browser }) => {
  const who = { email: `sessions-${Date.now()}@keymeter.local`, password: 'a sessions password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  const other = await browser.newPage();
  await signIn(other, who);
  await signIn(page, who);

  await page.goto('/dashboard/account');
  await hydrated(page);
  const rows = page.getByTestId('session-row');
  await expect(rows).toHaveCount(2);
  // Playwright's Chromium, named from its User-Agent; this browser is marked.
  await expect(rows.filter({ hasText: /Chrome on / })).toHaveCount(2);
  await expect(rows.filter({ hasText: 'This browser' })).toHaveCount(1);

  await page.getByRole('button', { name: 'Sign out everywhere else' }).click();
  await expect(page.getByTestId('others-signed-out')).toHaveText('Signed out of 1 other session.');
  await expect(rows).toHaveCount(1);
  await expect(rows).toContainText('This browser');

  // The other browser is signed out at its next page; this one stays signed in.
  await other.goto('/dashboard/developers/api-keys');
  await expect(other).toHaveURL(/\/login\?next=/);
  await page.goto('/dashboard/developers/api-keys');
  await expect(page.getByTestId('account-email')).toHaveText(who.email);
});

test('an admin disables an account from the accounts page, and enables it again', async ({ page, browser }) => {
  const who = { email: `disable-${Date.now()}@keymeter.local`, password: 'a disabled password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  const merchant = await browser.newPage();
  await signIn(merchant, who);

  await signIn(page, ADMIN);
  await page.goto('/admin');
  await hydrated(page);
  await page.getByRole('link', { name: 'Accounts' }).click();
  await expect(page).toHaveURL(/\/admin\/accounts$/);
  await page.getByLabel('Find accounts').fill(who.email);
  await page.getByRole('button', { name: 'Search' }).click();
  const row = page.getByTestId('account-row').filter({ hasText: who.email });
  await expect(row).toHaveCount(1);
  await expect(row.getByTestId('account-status')).toHaveText('active');

  // Disabling asks first, where the keyboard is; Escape and Cancel close the question again.
  await row.getByTestId('disable-account').click();
  await expect(row.getByRole('alertdialog')).toHaveAccessibleDescription(`Disable ${who.email}? It is signed out everywhere; its 0 active keys keep working.`);
  await expect(row.getByRole('button', { name: `Disable ${who.email}` })).toBeFocused();
  await page.keyboard.press('Escape');
  await expect(row.getByRole('alertdialog')).toBeHidden();
  await expect(row.getByTestId('disable-account')).toBeFocused();
  await row.getByTestId('disable-account').click();
  await row.getByRole('button', { name: 'Cancel' }).click();
  await expect(row.getByRole('alertdialog')).toBeHidden();
  await expect(row.getByTestId('account-status')).toHaveText('active');
  await row.getByTestId('disable-account').click();
  await row.getByRole('button', { name: `Disable ${who.email}` }).click();
  await expect(page.getByTestId('account-switched')).toHaveText(`Disabled ${who.email}: signed out of 1 session. Its API keys keep working.`);
  // The button went with the answer: what was done is said where the keyboard now is.
  await expect(page.getByTestId('account-switched')).toBeFocused();
  await expect(row.getByTestId('account-status')).toHaveText('disabled');
  await merchant.goto('/dashboard/developers/api-keys');
  await expect(merchant).toHaveURL(/\/login\?next=/);

  await row.getByRole('button', { name: `Enable ${who.email}` }).click();
  await expect(page.getByTestId('account-switched')).toHaveText(`Enabled ${who.email}: it can sign in again.`);
  await expect(row.getByTestId('account-status')).toHaveText('active');
  await signIn(merchant, who);

  // The admin's own row offers no switch.
  await page.getByLabel('Find accounts').fill(ADMIN.email);
  await page.getByRole('button', { name: 'Search' }).click();
  const own = page.getByTestId('account-row').filter({ hasText: ADMIN.email });
  await expect(own).toContainText('(you)');
  await expect(own.getByRole('button')).toHaveCount(0);
});

test('while one account is being switched, an admin can switch another', async ({ page }) => {
  const stamp = Date.now();
  const first = `switch-a-${stamp}@keymeter.local`;
  const second = `switch-b-${stamp}@keymeter.local`;
  cli(['user', 'add', '--email', first], 'a first password\n');
  cli(['user', 'add', '--email', second], 'a second password\n');
  cli(['user', 'disable', '--email', second]);
  await signIn(page, ADMIN);
  await page.goto(`/admin/accounts?q=${stamp}`);
  await hydrated(page);
  const rowOf = (email: string) => page.getByTestId('account-row').filter({ hasText: email });
  await expect(rowOf(second).getByTestId('account-status')).toHaveText('disabled');

  // The first answer is held back, so that switch is still pending when the second is asked.
  let held: (() => Promise<void>) | undefined;
  await page.route('**/rpc/admin/accounts/switch', async (route) => {
    if (held === undefined && (route.request().postData() ?? '').includes('switch-a-')) {
      held = () => route.continue();
    } else {
      await route.continue();
    }
  });
  await rowOf(first).getByTestId('disable-account').click();
  await rowOf(first).getByRole('button', { name: `Disable ${first}` }).click();
  await expect.poll(() => held !== undefined).toBe(true);
  await expect(rowOf(first).getByRole('button', { name: `Disable ${first}` })).toHaveAttribute('aria-disabled', 'true');
  await rowOf(second).getByRole('button', { name: `Enable ${second}` }).click();
  await expect(page.getByTestId('account-switched')).toHaveText(`Enabled ${second}: it can sign in again.`);
  await expect(rowOf(second).getByTestId('account-status')).toHaveText('active');
  // The first still waits for its own answer, and only it.
  await expect(rowOf(first).getByRole('button', { name: `Disable ${first}` })).toHaveAttribute('aria-disabled', 'true');
  await expect(rowOf(first).getByTestId('account-status')).toHaveText('active');

  await held!();
  await expect(rowOf(first).getByTestId('account-status')).toHaveText('disabled');
});

test('someone who forgot their password asks for a link on the sign-in page and chooses a new one', async ({ page }) => {
  const who = { email: `reset-${Date.now()}@keymeter.local`, password: 'the forgotten password' };
  cli(['user', 'add', '--email', who.email], `${who.password}\n`);
  watchForBrokenBundle(page);
  await page.goto('/login');
  await hydrated(page);
  await page.getByRole('link', { name: 'Forgot your password?' }).click();
  await expect(page).toHaveURL(/\/password-reset$/);
  await page.getByLabel('Email').fill(who.email);
  await page.getByRole('button', { name: 'Mail me a link' }).click();
  await expect(page.getByTestId('reset-asked')).toContainText('a link is on its way');

  const link = await resetLinkPath(who.email);
  await page.goto(link);
  await hydrated(page);
  await expect(page.getByTestId('reset-address')).toHaveText(/^re\*\*\*@keymeter\.local$/);
  await page.getByLabel('New password (at least 10 characters)').fill('the chosen password');
  await page.getByLabel('New password again').fill('not the same one');
  await page.getByRole('button', { name: 'Set the password' }).click();
  await expect(page.getByTestId('choose-error')).toHaveText('The two passwords differ.');
  await expect(page.getByLabel('New password again')).toHaveAccessibleDescription('The two passwords differ.');

  await page.getByLabel('New password again').fill('the chosen password');
  await page.getByRole('button', { name: 'Set the password' }).click();
  await expect(page).toHaveURL(/\/login\?password_reset=1$/);
  await expect(page.getByTestId('password-was-reset')).toHaveText('Your password was changed. Sign in with the new one.');
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password').fill('the chosen password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys$/);
  await expect(page.getByTestId('account-email')).toHaveText(who.email);

  // The link worked once.
  await page.goto(link);
  await expect(page.getByTestId('reset-link-gone')).toContainText('expired or was used already');
  await page.getByRole('link', { name: 'Ask for a new link' }).click();
  await expect(page).toHaveURL(/\/password-reset$/);
});
