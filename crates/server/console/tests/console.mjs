// The console's end-to-end checks in a real headless Chromium (Debian's),
// driven by playwright-core. Started by crates/server/tests/console.rs,
// which seeds a server through the gRPC API and passes what it made in
// the environment. Prints one line per check; exits 1 on the first failure
// (with a screenshot of the page it failed on).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (v === undefined) { throw new Error(`missing environment variable ${name}`); }
  return v;
};
const URL = env("PYPES_URL");
const SHOTS = env("SCREENSHOTS");
const A = env("TENANT_A"), B = env("TENANT_B"), PYPE = env("PYPE_A"), SESSION = env("SESSION_A");
const EXPECT_HOURLY = JSON.parse(env("EXPECT_HOURLY"));
const EXPECT_DAILY = JSON.parse(env("EXPECT_DAILY"));

let step = "start";
function ok(cond, what) {
  if (!cond) { throw new Error(`${step}: ${what}`); }
}
function pass(what) { console.log(`ok - ${what}`); }

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const problems = [];
const pages = [];

async function newPage(opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...opts });
  const page = await context.newPage();
  page.on("dialog", async (d) => { problems.push(`a dialog opened: ${d.message()}`); await d.dismiss(); });
  page.on("pageerror", (e) => problems.push(`script error on ${page.url()}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 4\d\d/.test(m.text())) { problems.push(`console error on ${page.url()}: ${m.text()}`); }
  });
  // Nothing may be fetched from another origin.
  page.on("request", (r) => { if (!r.url().startsWith(URL)) { problems.push(`request to another origin: ${r.url()}`); } });
  pages.push(page);
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page, key) {
  await page.goto(`${URL}/console/sign-in`);
  await page.fill("#key", key);
  await Promise.all([page.waitForNavigation(), page.press("#key", "Enter")]);
}

async function text(page) { return await page.locator("main").innerText(); }

try {
  // ---------------------------------------------------------------- sign-in
  step = "sign-in";
  const admin = await newPage();
  const resp = await admin.goto(`${URL}/console/overview`);
  ok(admin.url().includes("/console/sign-in"), "an anonymous visit goes to the sign-in page");
  const csp = (await resp.allHeaders())["content-security-policy"] || "";
  ok(csp.includes("script-src 'self'") && !csp.includes("unsafe-inline"), `strict CSP, got ${csp}`);
  await shot(admin, "sign-in");
  await admin.fill("#key", "pypes_not_a_key");
  await Promise.all([admin.waitForNavigation(), admin.click("button[type=submit]")]);
  ok((await text(admin)).includes("Sign-in refused"), "a wrong key is refused with a message");
  pass("sign-in refuses a wrong key, CSP is strict");
  await signIn(admin, env("ADMIN_KEY"));
  ok(admin.url().endsWith("/console/overview"), `the admin key lands on the overview (${admin.url()})`);
  const cookies = await admin.context().cookies();
  const session = cookies.find((c) => c.name.includes("pypes_console"));
  ok(session && session.httpOnly && session.sameSite === "Strict", `session cookie is HttpOnly, SameSite=Strict: ${JSON.stringify(session)}`);
  pass("sign-in with the admin key gives an HttpOnly SameSite=Strict session cookie");

  // ---------------------------------------------------------------- overview
  step = "overview";
  await admin.waitForFunction(() => Number(document.getElementById("metrics").dataset.samples || 0) >= 3, null, { timeout: 20000 });
  // Points on every chart = samples in the history (read together; a new
  // sample between the two reads is retried).
  let matched = false;
  // The page reloads every interval (1 s) out of phase with the sampler: a
  // busy machine can keep them apart for seconds, so it is tried for 12 s.
  for (let i = 0; i < 40 && !matched; i++) {
    const r = await admin.evaluate(async () => {
      const d = await (await fetch("/console/api/metrics")).json();
      const charts = [...document.querySelectorAll(".chart[data-series]")].map((c) => [c.dataset.series, Number(c.dataset.points)]);
      return { n: d.t.length, charts };
    });
    matched = r.charts.length === 10 && r.charts.every(([, p]) => p === r.n);
    if (!matched) { await admin.waitForTimeout(300); }
  }
  ok(matched, "each overview chart has as many points as the metrics history");
  const before = await admin.evaluate(() => Number(document.getElementById("metrics").dataset.samples));
  await admin.waitForFunction((b) => Number(document.getElementById("metrics").dataset.samples) > b, before, { timeout: 10000 });
  pass(`the overview's 10 charts have as many points as the history and grow live (${before} → more)`);
  await shot(admin, "overview");

  // ---------------------------------------------------------------- tenants
  step = "tenants";
  await admin.goto(`${URL}/console/tenants`);
  const xss = admin.locator("td a", { hasText: "Acme <script>alert(1)</script>" });
  ok(await xss.count() === 1, "the tenant named <script>…</script> is shown as text");
  ok(await admin.locator("main script").count() === 0, "no script element inside the page's content");
  await shot(admin, "tenants");
  await admin.fill("#q", "other");
  await Promise.all([admin.waitForNavigation(), admin.press("#q", "Enter")]);
  const found = await admin.locator("tbody tr").allInnerTexts();
  ok(found.length === 1 && found[0].includes("Other Corp"), `search finds only Other Corp: ${found}`);
  pass("tenants list: names escaped, search works");

  step = "tenant";
  await admin.goto(`${URL}/console/tenants/${A}`);
  ok(await admin.locator("td a", { hasText: "Support <b>desk</b>" }).count() === 1, "the Pype's name is text, not markup");
  ok(await admin.locator("main h1").innerText() === "Tenant Acme <script>alert(1)</script>", "the heading shows the name as text");
  await shot(admin, "tenant");
  pass("tenant page: Pypes listed, names escaped");

  // ---------------------------------------------------------------- analytics
  step = "analytics";
  await admin.goto(`${URL}/console/tenants/${A}/pypes/${PYPE}?from=${env("FROM")}&to=${env("TO")}`);
  for (const [which, expected] of [["hourly", EXPECT_HOURLY], ["daily", EXPECT_DAILY]]) {
    await admin.waitForSelector(`#chart-${which}[data-points]`);
    const got = await admin.evaluate((w) => {
      const el = document.getElementById(`chart-${w}`);
      return { points: Number(el.dataset.points), suppressed: Number(el.dataset.suppressed), cells: JSON.parse(document.getElementById(`cells-${w}`).textContent) };
    }, which);
    ok(got.points === expected.length, `${which}: ${got.points} chart points, QueryAnalytics gave ${expected.length} cells`);
    const nulls = expected.filter((c) => c.sessions === null).length;
    ok(got.suppressed === nulls, `${which}: ${got.suppressed} marked suppressed, QueryAnalytics suppressed ${nulls}`);
    expected.forEach((c, i) => {
      ok(got.cells[i].t === c.t, `${which} cell ${i}: time ${got.cells[i].t} vs ${c.t}`);
      ok(got.cells[i].sessions === c.sessions, `${which} cell ${i}: ${got.cells[i].sessions} vs ${c.sessions}`);
      ok(got.cells[i].suppressed === (c.sessions === null), `${which} cell ${i}: suppressed flag`);
    });
    // The table: a suppressed cell says so and shows no number.
    const rows = await admin.locator(`#table-${which} tbody tr`).allTextContents();
    ok(rows.length === expected.length, `${which}: ${rows.length} table rows`);
    expected.forEach((c, i) => {
      if (c.sessions === null) { ok(/suppressed/.test(rows[i]) && !/\d+\s*$/.test(rows[i].replace(/^.*Z/, "")), `${which} row ${i} is suppressed: ${rows[i]}`); }
    });
    ok(nulls > 0 || which === "daily", `${which}: the seed has a suppressed cell`);
  }
  await admin.locator("details summary").click();
  await shot(admin, "pype");
  pass(`analytics charts equal QueryAnalytics (${EXPECT_HOURLY.length} hourly, ${EXPECT_DAILY.length} daily cells; suppressed ones marked, never counted)`);

  // ---------------------------------------------------------------- privacy officer: erasure
  step = "erasure";
  const officer = await newPage();
  await signIn(officer, env("OFFICER_KEY"));
  ok(officer.url().endsWith("/console/tenants"), `a privacy officer lands on the tenants (${officer.url()})`);
  await officer.goto(`${URL}/console/tenants/${A}/privacy`);
  await officer.fill("#erase-subject", env("ERASE_SUBJECT"));
  await Promise.all([officer.waitForNavigation(), officer.click("text=Request erasure…")]);
  ok((await text(officer)).includes("cannot be undone"), "an erasure asks for confirmation first");
  await shot(officer, "confirm-erasure");
  await Promise.all([officer.waitForNavigation(), officer.click("text=Erase the end user")]);
  ok(officer.url().includes(`/erasures/${env("ERASE_SUBJECT")}`), `after confirming: the erasure page (${officer.url()})`);
  for (let i = 0; i < 60 && (await officer.locator("#certificate").count()) === 0; i++) {
    await officer.waitForTimeout(500);
    await officer.reload();
  }
  await officer.waitForFunction(() => document.getElementById("certificate") && document.getElementById("certificate").dataset.browserCheck, null, { timeout: 10000 });
  ok(await officer.locator("#certificate").getAttribute("data-browser-check") === "valid", "the browser checks the Ed25519 signature: valid");
  ok((await officer.locator("#server-check").innerText()).includes("valid"), "the server's check says valid");
  await shot(officer, "certificate");
  const [download] = await Promise.all([officer.waitForEvent("download"), officer.click("text=Download the certificate")]);
  const file = JSON.parse(fs.readFileSync(await download.path(), "utf8"));
  ok(file.certificate.includes(env("ERASE_SUBJECT")) && file.signature.length === 128, "the downloaded certificate names the subject and holds the signature");
  pass("erasure requested from the page with confirmation; certificate verified in the browser and downloaded");

  const openList = await officer.goto(`${URL}/console/privacy`);
  ok(openList.status() === 200 && (await officer.locator("main h1").innerText()) === "Open erasure requests", "the open erasure requests of every tenant");
  await shot(officer, "open-erasures");

  step = "restriction";
  await officer.goto(`${URL}/console/tenants/${A}/privacy`);
  await officer.fill("#restrict-subject", env("RESTRICT_SUBJECT"));
  await Promise.all([officer.waitForNavigation(), officer.click("text=Restrict processing…")]);
  await Promise.all([officer.waitForNavigation(), officer.click("button.danger")]);
  await officer.waitForTimeout(300);
  await officer.goto(`${URL}/console/tenants/${A}/privacy`);
  ok((await officer.locator("#restriction-table").innerText()).includes(env("RESTRICT_SUBJECT")), "the restricted subject is listed");
  ok((await officer.locator("#erasure-table").innerText()).includes("certified"), "the erasure is listed as certified");
  await shot(officer, "privacy");
  pass("restriction requested from the page with confirmation; privacy page lists erasures and restrictions");

  step = "audit";
  await officer.goto(`${URL}/console/audit?action=privacy.erasure_requested`);
  ok((await officer.locator("#chain-state").innerText()).includes("The chain verifies"), "the audit chain verifies");
  ok(await officer.locator("#audit-table tbody tr").count() >= 1, "the erasure request is in the trail");
  await shot(officer, "audit");
  pass("audit page: chain verified, filter by action");

  // ---------------------------------------------------------------- CSRF
  step = "csrf";
  const forged = await officer.context().request.post(`${URL}/console/tenants/${A}/privacy/erasure`, {
    form: { subject: env("RESTRICT_SUBJECT"), confirm: "yes" }, maxRedirects: 0,
  });
  ok(forged.status() === 403 && (await forged.text()).includes("CSRF"), `a form without its CSRF token is refused (${forged.status()})`);
  const wrong = await officer.context().request.post(`${URL}/console/tenants/${A}/privacy/erasure`, {
    form: { subject: env("RESTRICT_SUBJECT"), confirm: "yes", csrf: "00".repeat(32) }, maxRedirects: 0,
  });
  ok(wrong.status() === 403, "a wrong CSRF token is refused");
  ok(!(await wrong.text()).includes("panicked"), "no stack trace");
  pass("forms without (or with a wrong) CSRF token are refused with a clear page");

  // ---------------------------------------------------------------- support: break-glass
  step = "support";
  const support = await newPage();
  await signIn(support, env("SUPPORT_KEY"));
  await support.goto(`${URL}/console/tenants/${A}/sessions/${SESSION}`);
  ok(await support.locator("#no-content").count() === 1, "support without a grant sees a notice instead of content");
  ok(!(await support.content()).includes("SECRET-4711"), "support without a grant sees no content");
  ok(await support.locator("#timeline-table tbody tr").count() >= 2, "the timeline is shown");
  await shot(support, "session-without-grant");
  const refusedAudit = await support.goto(`${URL}/console/audit`);
  ok(refusedAudit.status() === 403 && (await text(support)).includes("may not"), "support may not read the audit trail");
  await support.goto(`${URL}/console/tenants/${A}/sessions/${SESSION}`);
  await support.fill("#reason", "TICKET-1234 customer asked for help");
  await support.fill("#minutes", "15");
  await Promise.all([support.waitForNavigation(), support.click("text=Open break-glass access…")]);
  ok((await text(support)).includes("every read"), "break-glass asks for confirmation");
  await Promise.all([support.waitForNavigation(), support.click("text=Open the grant")]);
  ok((await support.locator("#message-table").innerText()).includes("SECRET-4711"), "with a grant, support reads the content");
  await shot(support, "session");
  await officer.goto(`${URL}/console/audit?action=staff.break_glass`);
  const grantRows = await officer.locator("#audit-table tbody tr").allInnerTexts();
  ok(grantRows.some((r) => r.includes("staff.break_glass_open")) && grantRows.some((r) => r.includes("staff.break_glass_access")), `the grant and the read are audited: ${grantRows.length} rows`);
  ok((await officer.locator("#grant-table").innerText()).includes("TICKET-1234"), "the open grant is listed");
  pass("break-glass from the page: no content before, content after, both audited");

  // ---------------------------------------------------------------- cross-tenant
  step = "cross-tenant";
  const tenant = await newPage();
  await signIn(tenant, env("TENANT_A_KEY"));
  ok(tenant.url().endsWith(`/console/tenants/${A}`), `a tenant key lands on its own tenant (${tenant.url()})`);
  const other = await tenant.goto(`${URL}/console/tenants/${B}`);
  ok(other.status() === 403 && (await text(tenant)).includes("not a key of tenant"), `another tenant's page is refused (${other.status()})`);
  await shot(tenant, "refused-cross-tenant");
  const otherPrivacy = await tenant.goto(`${URL}/console/tenants/${B}/privacy`);
  ok(otherPrivacy.status() === 403, "another tenant's privacy page is refused");
  const own = await tenant.goto(`${URL}/console/tenants/${A}/sessions/${SESSION}`);
  ok(own.status() === 200 && (await tenant.locator("#message-table").innerText()).includes("SECRET-4711"), "a tenant reads its own Session");
  const listed = await tenant.goto(`${URL}/console/tenants`);
  ok(listed.status() === 200 && !(await text(tenant)).includes("Other Corp"), "a tenant's list holds only itself");
  await admin.goto(`${URL}/console/audit?action=authz.refused`);
  const refusals = await admin.locator("#audit-table tbody tr").allInnerTexts();
  ok(refusals.some((r) => r.includes("rpc:ListPypes")) && refusals.some((r) => r.includes("rpc:ReadAuditTrail")), `the refusals are audited: ${refusals.join(" | ")}`);
  await admin.goto(`${URL}/console/audit?action=console.csrf_refused`);
  ok(await admin.locator("#audit-table tbody tr").count() >= 2, "the CSRF refusals are audited");
  pass("a tenant key sees its own tenant only; refusals (cross-tenant, role, CSRF) are audited");

  // ---------------------------------------------------------------- keyboard only, phone width
  step = "keyboard";
  const kb = await newPage();
  await kb.goto(`${URL}/console/sign-in`);
  await kb.keyboard.type(env("ADMIN_KEY"));
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  async function tabTo(page, pred, what) {
    for (let i = 0; i < 80; i++) {
      await page.keyboard.press("Tab");
      const hit = await page.evaluate(pred);
      if (hit) { return; }
    }
    throw new Error(`keyboard: never reached ${what}`);
  }
  await tabTo(kb, () => document.activeElement.classList.contains("skip"), "the skip link");
  await tabTo(kb, () => document.activeElement.textContent === "Tenants", "the Tenants link");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  ok(kb.url().endsWith("/console/tenants"), "Enter on the Tenants link opens the list");
  await tabTo(kb, () => document.activeElement.id === "q", "the search box");
  await kb.keyboard.type("Acme");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  await tabTo(kb, () => (document.activeElement.textContent || "").startsWith("Acme"), "the tenant's link");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  ok(kb.url().endsWith(`/console/tenants/${A}`), "Enter opens the tenant");
  await tabTo(kb, () => (document.activeElement.textContent || "").startsWith("Support"), "the Pype's link");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  ok(kb.url().includes(`/pypes/${PYPE}`), "Enter opens the Pype");
  await tabTo(kb, () => document.activeElement.textContent === "Audit", "the Audit link");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  await tabTo(kb, () => document.activeElement.id === "action", "the action filter");
  await kb.keyboard.type("console.");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  ok(kb.url().includes("action=console."), "the filter form is sent from the keyboard");
  await tabTo(kb, () => document.activeElement.textContent === "Sign out", "the sign-out button");
  await Promise.all([kb.waitForNavigation(), kb.keyboard.press("Enter")]);
  ok((await text(kb)).includes("signed out"), "signed out from the keyboard");
  pass("keyboard only: sign in, skip link, tenants, search, tenant, Pype, audit filter, sign out");

  step = "phone";
  const phone = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
  await signIn(phone, env("ADMIN_KEY"));
  for (const [name, url] of [["overview", "/console/overview"], ["tenants", "/console/tenants"], ["pype", `/console/tenants/${A}/pypes/${PYPE}`], ["privacy", `/console/tenants/${A}/privacy`], ["audit", "/console/audit"]]) {
    await phone.goto(URL + url);
    const wide = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    ok(wide <= 1, `${name} fits a phone's width (overflow ${wide}px)`);
    if (name === "overview" || name === "pype") { await shot(phone, `phone-${name}`); }
  }
  pass("pages fit a 390 px wide phone screen (tables scroll inside their box)");

  // ---------------------------------------------------------------- expiry
  step = "expiry";
  if (process.env.CLOCK_FILE) {
    fs.writeFileSync(process.env.CLOCK_FILE, "3600\n");
    await officer.waitForTimeout(400);
    const expired = await officer.goto(`${URL}/console/tenants`);
    ok(expired.status() === 401 && (await text(officer)).includes("session has ended"), `an idle session has ended (${expired.status()})`);
    await shot(officer, "expired");
    pass("a session idle past auth.idle_secs is ended, with a clear page");
  }
  const stale = await newPage();
  await stale.context().addCookies([{ name: "pypes_console", value: "ab".repeat(32), url: URL }]);
  const staleResp = await stale.goto(`${URL}/console/tenants`);
  ok(staleResp.status() === 401 && (await text(stale)).includes("Sign in again"), "an unknown session token gets the sign-in page");
  await signIn(admin, env("ADMIN_KEY"));
  await admin.goto(`${URL}/console/audit?action=console.session_expired`);
  ok(await admin.locator("#audit-table tbody tr").count() >= 1, "ended sessions are audited");
  pass("ended or unknown sessions are refused with a clear page and audited");

  ok(problems.length === 0, `problems seen in the browser: ${problems.join("; ")}`);
  console.log("ALL CONSOLE CHECKS PASSED");
} catch (e) {
  console.log(`not ok - ${e.message}`);
  for (const [i, p] of pages.entries()) {
    try { await p.screenshot({ path: path.join(SHOTS, `failed-${i}.png`), fullPage: true }); console.log(`  page ${i} at ${p.url()}`); } catch { /* closed */ }
  }
  if (problems.length) { console.log(`  also seen: ${problems.join("; ")}`); }
  await browser.close();
  process.exit(1);
}
await browser.close();
