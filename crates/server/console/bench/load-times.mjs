// The console's page load times (docs/console.md): signs in with the admin
// key and loads each page `ROUNDS` times in Debian's Chromium; prints the
// median and the worst of the navigation (request start to the load event)
// and of the server's answer (request start to the last byte).
//
//   PYPES_URL=http://127.0.0.1:8080 ADMIN_KEY=… TENANT=… PYPE=… SESSION=… node load-times.mjs
import { chromium } from "playwright-core";

const env = (n) => { const v = process.env[n]; if (!v) { throw new Error(`set ${n}`); } return v; };
const URL = env("PYPES_URL"), T = env("TENANT"), P = env("PYPE"), S = env("SESSION");
const ROUNDS = Number(process.env.ROUNDS || 5);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  ignoreHTTPSErrors: true,
});
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
await page.goto(`${URL}/console/sign-in`);
await page.fill("#key", env("ADMIN_KEY"));
await Promise.all([page.waitForNavigation(), page.press("#key", "Enter")]);
const pages = [
  ["overview", "/console/overview"],
  ["tenants", "/console/tenants"],
  ["tenant", `/console/tenants/${T}`],
  ["pype (7 days of analytics)", `/console/tenants/${T}/pypes/${P}`],
  ["privacy", `/console/tenants/${T}/privacy`],
  ["open erasures", "/console/privacy"],
  ["audit", "/console/audit"],
  ["session", `/console/tenants/${T}/sessions/${S}`],
];
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
console.log(`page | median load (ms) | worst load (ms) | median server answer (ms)`);
for (const [name, path] of pages) {
  const load = [], answer = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = await page.goto(URL + path, { waitUntil: "load" });
    if (r.status() !== 200) { throw new Error(`${name}: HTTP ${r.status()}`); }
    const t = await page.evaluate(() => { const n = performance.getEntriesByType("navigation")[0]; return [n.loadEventEnd - n.startTime, n.responseEnd - n.requestStart]; });
    load.push(t[0]); answer.push(t[1]);
  }
  console.log(`${name} | ${median(load).toFixed(0)} | ${Math.max(...load).toFixed(0)} | ${median(answer).toFixed(0)}`);
}
await browser.close();
