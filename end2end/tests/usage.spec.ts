import { test, expect, Page } from '@playwright/test';
import { MERCHANT, createKey, hydrated, signIn } from './helpers';

/** Sum of a drawn chart's first series, read from the live ECharts instance. */
async function seriesTotal(page: Page, id: string): Promise<number> {
  const data = await seriesData(page, id, 0);
  return data.length === 0 ? -1 : data.reduce((a: number, b) => a + (b ?? 0), 0);
}

/** One series' data points of a drawn chart (null where the chart shows a gap). */
async function seriesData(page: Page, id: string, series: number): Promise<(number | null)[]> {
  return page.evaluate(
    ([id, series]) => {
      const el = document.getElementById(id as string);
      const chart = el && (window as any).echarts?.getInstanceByDom(el);
      if (!chart) return [];
      // An empty series has no `data` at all (charming leaves empty lists out).
      // A point drawn its own way (the minute still under way) is an object with its value.
      const value = (v: any) => (v !== null && typeof v === 'object' ? v.value : v);
      return (chart.getOption().series[series as number]?.data ?? []).map(value).map((v: any) => (v === null || v === '-' ? null : Number(v)));
    },
    [id, series],
  );
}

async function chartsDrawn(page: Page) {
  for (const id of ['chart-requests', 'chart-errors', 'chart-latency', 'chart-breakdown']) {
    await expect(page.locator(`#${id} canvas`)).toHaveCount(1);
  }
}

test('the usage page updates live as the key is used', async ({ page, request }) => {
  await signIn(page, MERCHANT);
  const name = `Live ${Date.now()}`;
  const { secret } = await createKey(page, name);

  // Client-side navigation from the list to the usage page.
  await page.getByTestId('key-row').filter({ hasText: name }).getByRole('link', { name: 'usage' }).click();
  await expect(page.getByTestId('usage-title')).toContainText(name);
  await expect(page.getByTestId('usage-empty')).toBeVisible();
  // The example call names this server.
  await expect(page.getByTestId('usage-empty')).toContainText(`${process.env.KEYMETER_BASE_URL}/api/v1/ping`);
  // The top tables say they are empty rather than show bare headings.
  await expect(page.getByTestId('top-endpoints-empty')).toHaveText('No admitted calls in this range.');
  await expect(page.getByTestId('status-codes-empty')).toHaveText('No calls.');
  await chartsDrawn(page);
  await page.evaluate(() => ((window as any).__sameDocument = true));
  const before = await seriesTotal(page, 'chart-requests');
  expect(before).toBe(0);

  for (let i = 0; i < 5; i++) {
    const res = await request.get('/api/v1/ping', { headers: { 'X-API-Key': secret } });
    expect(res.status()).toBe(200);
  }
  const notFound = await request.get('/api/v1/status/404', { headers: { 'X-API-Key': secret } });
  expect(notFound.status()).toBe(404);

  // No reload: the chart and the gauges follow the live stream.
  await expect.poll(() => seriesTotal(page, 'chart-requests'), { timeout: 20_000 }).toBe(6);
  await expect(page.getByTestId('gauge-hour')).toContainText('6 of 1,000 requests');
  // The key has traffic now: the "No traffic yet" card is gone without a reload.
  await expect(page.getByTestId('usage-empty')).toHaveCount(0);

  // Minutes without requests have no latency or error rate: gaps, not zeros.
  const admitted = await seriesData(page, 'chart-requests', 0);
  const [p50, p95, errors] = await Promise.all([
    seriesData(page, 'chart-latency', 0),
    seriesData(page, 'chart-latency', 1),
    seriesData(page, 'chart-errors', 0),
  ]);
  expect(admitted.length).toBe(60);
  for (const line of [p50, p95, errors]) {
    expect(line.map((v) => v === null)).toEqual(admitted.map((n) => !n));
  }
  expect(errors.filter((v) => v !== null).every((v) => v! >= 0 && v! <= 100)).toBe(true);
  // The minute still under way is drawn faded and named so in the tooltip, the others not.
  const drawn = await page.evaluate(() => {
    const chart = (window as any).echarts.getInstanceByDom(document.getElementById('chart-requests'));
    return chart.getOption().series.map((s: any) => s.data);
  });
  for (const bars of drawn) {
    const last = bars[bars.length - 1];
    expect(last.name).toMatch(/^So far in \d{2}:\d{2}$/);
    expect(last.itemStyle.opacity).toBeLessThan(1);
    expect(bars.slice(0, -1).every((v: any) => typeof v !== 'object')).toBe(true);
  }
  expect(await page.evaluate(() => (window as any).__sameDocument)).toBe(true);
});

test('the demo key shows full history with every chart drawn', async ({ page }) => {
  await signIn(page, MERCHANT);
  await page.getByTestId('key-row').filter({ hasText: 'Demo key' }).getByRole('link', { name: 'usage' }).click();
  await expect(page.getByTestId('usage-title')).toContainText('Demo key');
  await chartsDrawn(page);
  // Exact counts with thousands separators (billing needs them), not "3.4k".
  await expect(page.getByTestId('breakdown-table')).toContainText(/\d,\d{3}/);
  await expect(page.getByTestId('top-endpoints')).toContainText('/api/v1/status/{code}');
  await page.getByRole('link', { name: 'Weekly · 12 ISO weeks' }).click();
  await expect(page.getByTestId('breakdown-table')).toContainText(/week \d{4}-W\d{2}/);
  await page.getByRole('link', { name: 'Daily · 30 days' }).click();
  await page.getByRole('link', { name: '7 days' }).click();
  await expect(page.getByRole('link', { name: '7 days' })).toHaveClass(/active/);
  await page.waitForTimeout(1000);
  await page.screenshot({ path: 'test-results/usage.png', fullPage: true });

  // A fresh load renders the same page on the server, then hydrates it.
  await page.reload();
  await hydrated(page);
  await chartsDrawn(page);
});

test('changing the range of the top tables keeps the rest of the page as it was', async ({ page }) => {
  await signIn(page, MERCHANT);
  await page.getByTestId('key-row').filter({ hasText: 'Demo key' }).getByRole('link', { name: 'usage' }).click();
  await hydrated(page);
  await chartsDrawn(page);
  await page.evaluate(() => ((window as any).__sameDocument = true));
  const weekly = page.getByRole('link', { name: 'Weekly · 12 ISO weeks' });
  await weekly.click();
  await expect(weekly).toHaveAttribute('aria-current', 'true');
  await page.getByTestId('csv-from').fill('2026-01-05');
  const loaded = page.waitForResponse((res) => res.url().includes('/rpc/usage/top') && res.ok());
  // 7 days, not 24 h: the demo history ends at midnight, and from 23:00 UTC the 24 hours to the
  // end of this hour hold none of it (the test failed every day in that hour).
  await page.getByRole('link', { name: '7 days' }).click();
  await loaded;
  await expect(page.getByRole('link', { name: '7 days' })).toHaveAttribute('aria-current', 'true');
  await expect(page.getByRole('link', { name: '30 days', exact: true })).not.toHaveAttribute('aria-current');
  // The address says what is shown (a link to it shows the same), and the page was not loaded
  // again: the history tab, the export field and the drawn charts are the ones from before.
  await expect(page).toHaveURL(/\?history=weekly&top=7#top-calls$/);
  expect(await page.evaluate(() => (window as any).__sameDocument)).toBe(true);
  await expect(weekly).toHaveAttribute('aria-current', 'true');
  await expect(page.getByTestId('breakdown-table')).toContainText(/week \d{4}-W\d{2}/);
  await expect(page.getByTestId('csv-from')).toHaveValue('2026-01-05');
  await expect(page.getByTestId('top-endpoints')).toContainText('/api/v1/');
});

/** The UTC day `days` before today, as `YYYY-MM-DD`. */
function daysAgo(days: number): string {
  return new Date(Date.now() - days * 86_400_000).toISOString().slice(0, 10);
}

test('the history over a chosen range, per hour, without reloading the page', async ({ page }) => {
  await signIn(page, MERCHANT);
  await page.getByTestId('key-row').filter({ hasText: 'Demo key' }).getByRole('link', { name: 'usage' }).click();
  await hydrated(page);
  await chartsDrawn(page);
  await page.evaluate(() => ((window as any).__sameDocument = true));
  await expect(page.getByTestId('range-form')).toHaveCount(0);
  await page.getByRole('link', { name: 'Chosen range' }).click();
  // It opens on the last 30 days per day, as the daily history (dates on the server's clock).
  await expect(page.getByTestId('range-from')).toHaveValue(/^\d{4}-\d{2}-\d{2}$/);
  await expect(page).toHaveURL(/history=range&from=\d{4}-\d{2}-\d{2}&to=\d{4}-\d{2}-\d{2}&per=day&top=30#history$/);
  await expect(page.getByTestId('range-per')).toHaveValue('day');

  // Three whole days of the demo history, per hour: 72 rows, each named by its hour.
  const [from, to] = [daysAgo(3), daysAgo(1)];
  await page.getByTestId('range-from').fill(from);
  await page.getByTestId('range-to').fill(to);
  await page.getByTestId('range-per').selectOption('hour');
  const loaded = page.waitForResponse((res) => res.url().includes('/rpc/usage/history') && res.ok());
  await page.getByRole('button', { name: 'Show' }).click();
  await loaded;
  await expect(page).toHaveURL(new RegExp(`\\?history=range&from=${from}&to=${to}&per=hour&top=30#history$`));
  const rows = page.getByTestId('breakdown-table').locator('tbody tr');
  await expect(rows).toHaveCount(72);
  await expect(rows.first().locator('td').first()).toHaveText(/ 23:00$/);
  await expect(rows.last().locator('td').first()).toHaveText(/ 00:00$/);
  await expect(page.getByRole('link', { name: 'Chosen range' })).toHaveAttribute('aria-current', 'true');
  expect(await page.evaluate(() => (window as any).__sameDocument)).toBe(true);
  // The chart follows the table: one bar per hour.
  await expect.poll(async () => (await seriesData(page, 'chart-breakdown', 0)).length).toBe(72);
  // The range shown exports as CSV, per hour too, summing to the table's requests.
  const csvHref = await page.getByTestId('range-csv').getAttribute('href');
  expect(csvHref).toMatch(new RegExp(`/usage\\.csv\\?from=${from}&to=${to}&granularity=hour$`));
  const csv = await (await page.request.get(csvHref!)).text();
  const lines = csv.trim().split('\n');
  expect(lines[0]).toMatch(/^period_start,key_id,key_name,method,endpoint,requests,/);
  const exported = lines.slice(1).reduce((sum, line) => sum + Number(line.split(',')[5]), 0);
  const shown = (await page.getByTestId('breakdown-table').locator('tbody tr td:nth-child(2)').allInnerTexts())
    .reduce((sum, text) => sum + Number(text.replace(/,/g, '')), 0);
  expect(exported).toBe(shown);
  expect(shown).toBeGreaterThan(0);

  // Another range of the top tables keeps the chosen history (its address says both).
  await page.getByRole('link', { name: '7 days' }).click();
  await expect(page).toHaveURL(new RegExp(`from=${from}&to=${to}&per=hour&top=7#top-calls$`));
  await expect(rows).toHaveCount(72);

  // A reversed range, or more than a week per hour, is refused where it was typed, before
  // anything is asked of the server; the chart keeps no bars of the range before.
  let asked = 0;
  page.on('request', (req) => { if (req.url().includes('/rpc/usage/history')) asked++; });
  await page.getByTestId('range-from').fill(daysAgo(1));
  await page.getByTestId('range-to').fill(daysAgo(3));
  await page.getByRole('button', { name: 'Show' }).click();
  await expect(page.getByTestId('range-error')).toContainText('Range: from');
  await expect(page.getByTestId('range-to')).toHaveAttribute('aria-invalid', 'true');
  await expect(rows).toHaveCount(1);
  await expect(page.getByTestId('breakdown-empty')).toBeVisible();
  await expect(page.getByTestId('range-csv')).toHaveCount(0);
  await expect.poll(async () => (await seriesData(page, 'chart-breakdown', 0)).length).toBe(0);
  await page.getByTestId('range-from').fill(daysAgo(9));
  await page.getByTestId('range-to').fill(daysAgo(1));
  await page.getByRole('button', { name: 'Show' }).click();
  await expect(page.getByTestId('range-error')).toHaveText('Per hour, a range can cover at most 7 days; choose a shorter range or per day.');
  expect(asked).toBe(0);

  // Back goes to the range before: the fields follow the address, not what was last typed.
  await page.goBack();
  await page.goBack();
  await expect(page).toHaveURL(new RegExp(`from=${from}&to=${to}&per=hour&top=7#top-calls$`));
  await expect(page.getByTestId('range-from')).toHaveValue(from);
  await expect(page.getByTestId('range-to')).toHaveValue(to);
  await expect(rows).toHaveCount(72);

  // The same address loaded afresh shows the same history, rendered on the server.
  await page.goto(`${new URL(page.url()).pathname}?history=range&from=${from}&to=${to}&per=day&top=7`);
  await hydrated(page);
  await expect(rows).toHaveCount(3);
  await expect(page.getByTestId('range-per')).toHaveValue('day');
  await expect(page.getByTestId('range-error')).toHaveCount(0);
  // An address cut short (no `per`) shows the daily history, not an empty range.
  await page.goto(`${new URL(page.url()).pathname}?history=range&from=${from}&to=${to}`);
  await hydrated(page);
  await expect(page.getByRole('link', { name: 'Daily · 30 days' })).toHaveAttribute('aria-current', 'true');
  await expect(page.getByTestId('range-form')).toHaveCount(0);
});

test("a revoked key's usage page says so", async ({ page }) => {
  await signIn(page, MERCHANT);
  const name = `Gone ${Date.now()}`;
  const { row, keyId } = await createKey(page, name);
  await row.getByTestId('revoke').click();
  await row.getByTestId('confirm-revoke').click();
  await expect(row).toHaveAttribute('data-status', 'revoked');
  await page.goto(`/dashboard/developers/api-keys/${keyId}/usage`);
  await hydrated(page);
  await expect(page.getByTestId('usage-revoked')).toHaveText('revoked');
  await expect(page.getByTestId('revoked-notice')).toContainText('This key was revoked on');
  // No invitation to call the API with a key that is refused.
  await expect(page.getByTestId('usage-empty')).toHaveCount(0);
  await expect(page.getByTestId('ask-reason')).toHaveCount(0);
  // Nor a quota to watch: no gauges or projections, and the charts are not called live.
  await expect(page.getByTestId('gauge-hour')).toHaveCount(0);
  await expect(page.getByTestId('live-updated')).toContainText(/^revoked · /);
});

test('the live view says when its stream ends', async ({ page }) => {
  await signIn(page, MERCHANT);
  const { keyId } = await createKey(page, `Stream ${Date.now()}`);
  await page.goto(`/dashboard/developers/api-keys/${keyId}/usage`);
  await hydrated(page);
  await expect(page.getByTestId('live-link')).toBeHidden();
  // Signed out elsewhere: the server ends the stream at its next update and refuses the
  // browser's reconnection, so no more figures come.
  const out = await page.request.post('/rpc/auth/logout');
  expect(out.ok()).toBe(true);
  await expect(page.getByTestId('live-link')).toContainText('Live updates stopped', { timeout: 20_000 });
});
