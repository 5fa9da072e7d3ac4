import { defineConfig } from '@playwright/test';

// Drives Debian's Chromium against a server that `make test` has started (KEYMETER_BASE_URL).
export default defineConfig({
  testDir: './tests',
  timeout: 60_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  // One retry, reported as flaky in the list: this shared 2-core machine has slow moments. A test
  // that fails twice fails the run. (The hydration mismatches once seen were copies of a page
  // rendered twice on the server, fixed in session 11: docs/notes.md.)
  retries: 1,
  reporter: [['list']],
  outputDir: 'test-results',
  use: {
    baseURL: process.env.KEYMETER_BASE_URL ?? 'http://127.0.0.1:3000',
    headless: true,
    screenshot: 'only-on-failure',
    trace: 'off',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    },
  },
});
