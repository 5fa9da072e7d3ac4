import { test, expect } from '@playwright/test';
import { MERCHANT, cli, hydrated, settled, signIn } from './helpers';

// A merchant opens their pages while the key is busy: every load is rendered on the server
// from data that keeps changing (usage, last use, alerts) and must still hydrate cleanly.
test('pages rendered while the key is in use hydrate without errors', async ({ page, request }) => {
  const problems: string[] = [];
  page.on('console', (msg) => {
    const text = msg.text();
    if (/hydrat|panicked|unreachable/i.test(text)) problems.push(text);
  });
  await signIn(page, MERCHANT);
  const name = `Busy ${Date.now()}`;
  const secret = cli(['key', 'create', '--owner', MERCHANT.email, '--name', name]).trim();
  const id = cli(['key', 'list', '--owner', MERCHANT.email])
    .split('\n')
    .map((line) => line.split('\t'))
    .find((cols) => cols[3] === name)![0];
  // Low enough that alerts fire (50 %, 80 %, used up) while the pages load.
  cli(['quota', 'set', '--key', id, '--per-hour', '300', '--per-day', '100000']);

  let running = true;
  let sent = 0;
  const statuses = new Map<number, number>();
  const traffic = (async () => {
    while (running) {
      const answers = await Promise.all(
        Array.from({ length: 4 }, () => request.get('/api/v1/ping', { headers: { 'X-API-Key': secret } })),
      );
      for (const a of answers) statuses.set(a.status(), (statuses.get(a.status()) ?? 0) + 1);
      sent += 4;
    }
  })();
  try {
    // At least four rounds, and on until the traffic has passed the hourly quota (all alerts
    // fired, 429s flowing), however fast the machine is.
    for (let round = 0; round < 4 || (sent <= 300 && round < 40); round++) {
      for (const path of ['/dashboard/developers/api-keys', `/dashboard/developers/api-keys/${id}/usage`]) {
        await page.goto(path);
        await hydrated(page);
      }
    }
    await page.goto(`/dashboard/developers/api-keys/${id}/usage`);
    await hydrated(page);
    await expect(page.getByTestId('usage-title')).toContainText(name);
  } finally {
    running = false;
    await traffic;
  }
  console.log(`pings sent while the pages loaded: ${sent}`, statuses);
  expect(sent).toBeGreaterThan(300);
  // The key was really in use: calls admitted, then refused at its quota, nothing else.
  expect(statuses.get(200) ?? 0).toBeGreaterThan(0);
  expect(statuses.get(429) ?? 0).toBeGreaterThan(0);
  expect([...statuses.keys()].sort()).toEqual([200, 429]);
  // And its alerts fired while the pages loaded: 50 %, 80 % and used up.
  await settled(page, 'notifications/list', (list) => list.filter((n: any) => n.title.startsWith(`${name}: `)).length >= 3);
  expect(problems).toEqual([]);
});
