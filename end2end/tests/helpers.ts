import { expect, Page } from '@playwright/test';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const MERCHANT = { email: 'merchant@keymeter.local', password: 'merchant-demo-password' };
export const ADMIN = { email: 'admin@keymeter.local', password: 'admin-demo-password' };

/** Fails the test on any script error or a bundle file that did not load. */
export function watchForBrokenBundle(page: Page) {
  // Panics of the WASM app are printed here (console_error_panic_hook) before the trap.
  page.on('console', (msg) => { if (msg.type() === 'error' || msg.type() === 'warning') console.log(`browser console: ${msg.text()}`); });
  page.on('pageerror', (err) => { throw new Error(`page error: ${err.message}`); });
  // The pages' Content-Security-Policy must never block one of the app's own scripts or fetches.
  page.on('console', (msg) => {
    if (msg.text().includes('Content Security Policy')) throw new Error(`CSP violation: ${msg.text()}`);
  });
  page.on('response', (res) => {
    if (res.url().includes('/pkg/') && res.status() >= 400) {
      throw new Error(`bundle file failed to load: ${res.url()} (${res.status()})`);
    }
  });
}

/** Waits until the WASM has hydrated the page (the app marks <body> once it runs). */
export async function hydrated(page: Page) {
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
}

export async function signIn(page: Page, who: { email: string; password: string }) {
  watchForBrokenBundle(page);
  await page.goto('/login');
  await hydrated(page);
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password').fill(who.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(/\/dashboard\/developers\/api-keys$/);
  await hydrated(page);
  await expect(page.getByTestId('account-email')).toHaveText(who.email);
}

/**
 * Creates a key from the key list (signed in), optionally sets its hourly quota through the
 * operator CLI (daily 100), and returns its secret, its row in the list and its id.
 */
export async function createKey(page: Page, name: string, perHour?: number) {
  await page.getByTestId('key-name').fill(name);
  await page.getByRole('button', { name: 'Create key' }).click();
  const secret = (await page.getByTestId('new-secret').textContent())!.trim();
  const row = page.getByTestId('key-row').filter({ hasText: name });
  const keyId = (await row.getAttribute('data-key-id'))!;
  if (perHour !== undefined) {
    cli(['quota', 'set', '--key', keyId, '--per-hour', String(perHour), '--per-day', '100', '--reason', 'browser test']);
  }
  return { secret, row, keyId };
}

/** The id of the demo merchant's seeded key (the one with a month of history). */
export function demoKeyId(): string {
  const id = sql("SELECT k.id FROM api_keys k JOIN users u ON u.id = k.owner_id WHERE u.email = 'merchant@keymeter.local' AND k.name = 'Demo key' AND k.revoked_at IS NULL").trim();
  expect(id).toMatch(/^[0-9a-f-]{36}$/);
  return id;
}

/** Runs the operator CLI against the same database as the server under test. */
export function cli(args: string[], input?: string): string {
  const bin = process.env.KEYMETER_BIN;
  if (!bin) throw new Error('KEYMETER_BIN is not set: run the browser tests with `make test`');
  return execFileSync(bin, args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

/**
 * The path of the password reset link mailed to `email`, read from the mail folder as its owner
 * would read the message (the stored copy's text is erased once sent); waits for it to arrive.
 */
export async function resetLinkPath(email: string): Promise<string> {
  const dir = process.env.KEYMETER_MAIL_DIR;
  if (!dir) throw new Error('KEYMETER_MAIL_DIR is not set: run the browser tests with `make test`');
  let links: string[] = [];
  await expect.poll(() => {
    const files = existsSync(dir) ? readdirSync(dir) : [];
    links = files
      // Quoted-printable: long lines are broken with a trailing `=`.
      .map((f) => readFileSync(join(dir, f), 'utf8').replace(/\r\n/g, '\n').replace(/=\n/g, ''))
      .filter((m) => m.includes(`To: ${email}`) && m.includes('Subject: Choose a new keymeter password'))
      .map((m) => m.match(/\/password-reset\/[0-9a-f]{64}/)?.[0] ?? '');
    return links.length;
  }, { timeout: 15_000 }).toBe(1);
  expect(links[0]).not.toBe('');
  return links[0];
}

/** Runs SQL against the server's database (to set up states the product cannot be driven into). */
export function sql(statement: string): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set: run the browser tests with `make test`');
  return execFileSync('psql', [url, '-qtAc', statement], { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

/**
 * Waits until a server function (called with the page's session) returns what `ready` accepts.
 * Pages are loaded only once their data has settled: a page rendered on the server while its
 * data changes underneath can hydrate inconsistently (docs/notes.md).
 */
export async function settled(page: Page, rpc: string, ready: (data: any) => boolean, form: Record<string, string> = {}) {
  await expect.poll(async () => {
    const res = await page.request.post(`/rpc/${rpc}`, { form });
    return res.ok() && ready(await res.json());
  }, { timeout: 20_000 }).toBe(true);
}
