// The dashboard in Debian's Chromium, driven by Playwright (run by tests/dashboard.rs,
// which starts the broker, its clients and publishers). Walks every page as an operator
// would, through labels and roles, and takes a screenshot of each into SCREENSHOT_DIR.
// Exits non-zero with the step that failed.
//
// Env: DASHBOARD_URL, ADMIN_TOKEN, SCREENSHOT_DIR, CHROMIUM (the executable),
// USER_DATA_DIR (a fresh profile directory).

import { chromium } from "playwright-core";
import path from "node:path";

const url = process.env.DASHBOARD_URL;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SCREENSHOT_DIR;
if (!url || !token || !shots) {
  console.error("DASHBOARD_URL, ADMIN_TOKEN and SCREENSHOT_DIR are required");
  process.exit(2);
}

const WAIT = 10_000;
let step = "launch";
const log = (s) => {
  step = s;
  console.log(`- ${s}`);
};
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const context = await chromium.launchPersistentContext(process.env.USER_DATA_DIR || "", {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const tokenInUrls = [];
const consoleErrors = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on("request", (r) => {
    if (r.url().includes(token)) tokenInUrls.push(r.url());
  });
  page.on("console", (m) => {
    // Refusals the test provokes (401, 403, 422) are logged by Chromium as failed loads;
    // anything else the page logs as an error is a bug.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

  log("the token is required: the login form shows");
  await page.goto(url);
  const tokenField = page.getByLabel("Admin token");
  await tokenField.waitFor();
  check(await page.locator("#nav").isHidden(), "navigation hidden before signing in");
  await shot("login");

  log("a wrong token is refused");
  await tokenField.fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#login-error", { hasText: "refused" }).waitFor();
  check(await page.locator("#nav").isHidden(), "still no navigation after a wrong token");

  log("the right token opens the overview");
  await tokenField.fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#card-received .value").waitFor();
  check(await page.locator("#nav").isVisible(), "navigation shown");
  const stored = await page.evaluate(() => sessionStorage.getItem("mqtt-broker-admin-token"));
  check(stored === token, "token kept in session storage");

  log("overview numbers move while devices publish");
  const read = async (id) => Number((await page.locator(`#${id} .value`).textContent()).replace(/[^0-9.]/g, ""));
  const first = await read("card-received");
  let moved = false;
  for (const end = Date.now() + WAIT; Date.now() < end; ) {
    await page.waitForTimeout(500);
    if ((await read("card-received")) > first) {
      moved = true;
      break;
    }
  }
  check(moved, `messages received moved from ${first}`);
  check((await read("card-connections")) >= 3, "three clients connected");
  check((await read("card-retained")) >= 2, "two retained messages");
  await page.waitForTimeout(3000); // a few seconds of chart
  await page.locator("svg polyline.line.in").first().waitFor();
  await page.locator("text=/queue full/").waitFor();
  const bridgeRow = page.locator('#overview-bridges tr[data-bridge="cloud"]');
  await bridgeRow.waitFor();
  check((await bridgeRow.textContent()).includes("connecting"), "the unreachable bridge shows as connecting");
  await shot("overview");

  log("clients: search, detail, disconnect with confirmation");
  await page.getByRole("link", { name: "Clients" }).click();
  await page.locator('tr[data-client="victim-client"]').waitFor();
  await page.getByLabel("Search").fill("garden");
  await page.locator("#client-count", { hasText: "1 client matching" }).waitFor();
  check((await page.locator("#clients-table tbody tr").count()) === 1, "search leaves one row");
  await page.getByLabel("Search").fill("");
  await page.locator('tr[data-client="victim-client"]').waitFor();
  await shot("clients");
  await page.locator('tr[data-client="victim-client"] button.link').click();
  await page.locator("#client-detail", { hasText: "sensors/#" }).waitFor();
  await shot("client-detail");
  await page.locator("#client-detail").getByRole("button", { name: "Disconnect" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  check((await dialog.textContent()).includes("victim-client"), "the confirmation names the client");
  await page.locator("#confirm-ok").click();
  await page.locator('tr[data-client="victim-client"]').waitFor({ state: "detached" });
  await page.locator("#status", { hasText: "Disconnected victim-client" }).waitFor();

  log("topics: tree, retained messages with a hex view");
  await page.getByRole("link", { name: "Topics" }).click();
  await page.locator('#topic-tree li[data-path="sensors"]').waitFor();
  const blob = page.locator('tr[data-topic="firmware/kitchen/blob"]');
  await blob.waitFor();
  check((await blob.locator("pre").textContent()).includes("de ad be ef 00 01 7f 80"), "binary payload shown as hex");
  const status = page.locator('tr[data-topic="sensors/kitchen/status"]');
  check((await status.locator("pre").textContent()) === "online", "text payload shown as text");
  await status.getByRole("button", { name: "Hex" }).click();
  check((await status.locator("pre").textContent()).includes("6f 6e 6c 69 6e 65"), "hex view of a text payload");

  log("live tail: refused by the ACL for secret/#, live for sensors/#");
  await page.getByLabel("Topic filter").fill("secret/#");
  await page.getByRole("button", { name: "Start live tail" }).click();
  await page.locator("#tail-status", { hasText: "refused" }).waitFor();
  check((await page.locator("#tail-status").textContent()).includes("dashboard"), "the refusal names the dashboard identity");
  await page.getByLabel("Topic filter").fill("sensors/#");
  await page.locator("#tail-limit").fill("1000");
  await page.getByRole("button", { name: "Start live tail" }).click();
  await page.locator("#tail-messages li", { hasText: "sensors/garden/temperature" }).first().waitFor();
  await page.waitForTimeout(1000);
  await shot("topics");
  await page.getByRole("button", { name: "Stop live tail" }).click();
  await page.locator("#tail-status", { hasText: "stopped" }).waitFor();

  log("plugins: counters and the recent error of the plugin that trapped");
  await page.getByRole("link", { name: "Plugins" }).click();
  const plugin = page.locator('section[data-plugin="acl-trap"]');
  await plugin.waitFor();
  await plugin.locator("ul.errors li", { hasText: "bad-actor" }).first().waitFor();
  check((await plugin.textContent()).includes("authorize"), "the plugin's hooks are listed");
  await shot("plugins");

  log("config: a broken edit is refused with its reason");
  await page.getByRole("link", { name: "Config" }).click();
  const editor = page.getByLabel("Config file (YAML)");
  await page.waitForFunction(() => document.querySelector("#config-editor").value.includes("secret/#"));
  await page.locator("#reload-table tbody tr").first().waitFor();
  await shot("config");
  const original = await editor.inputValue();
  await editor.fill(original.replace("max_subscriptions: 1000", "max_subscriptions: 0"));
  await page.getByRole("button", { name: "Validate" }).click();
  await page.locator("#config-result", { hasText: "Invalid" }).waitFor();
  check((await page.locator("#config-result").textContent()).includes("limits.max_subscriptions"), "the error names the key");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("#config-result", { hasText: "Refused" }).waitFor();
  await page.locator("#reload-table tbody tr.warn").first().waitFor();
  await shot("config-refused");

  log("config: an ACL edit applies through a reload");
  await editor.fill(original.replace('"secret/#"', '"private/#"'));
  await page.getByRole("button", { name: "Validate" }).click();
  await page.locator("#config-result", { hasText: "Valid" }).waitFor();
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("#config-result", { hasText: "Applied" }).waitFor();
  check((await page.locator("#config-result").textContent()).includes("generation 2"), "the result names generation 2");
  check((await page.locator("#config-meta").textContent()).includes("Generation 2"), "generation 2 after apply");

  log("the live tail now sees secret/#");
  await page.getByRole("link", { name: "Topics" }).click();
  await page.getByLabel("Topic filter").fill("secret/#");
  await page.getByRole("button", { name: "Start live tail" }).click();
  await page.locator("#tail-messages li", { hasText: "secret/garden/code" }).first().waitFor();
  await page.getByRole("button", { name: "Stop live tail" }).click();

  log("a phone screen: one column, nothing wider than the screen");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("link", { name: "Overview" }).click();
  await page.locator("#card-received .value").waitFor();
  await page.waitForTimeout(2500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `page ${overflow}px wider than a phone screen`);
  await shot("overview-phone");

  log("keyboard: the navigation is reachable with Tab");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.textContent);
  check(typeof focused === "string" && focused.length > 0, "Tab reaches a control");

  log("sign out");
  await page.getByRole("button", { name: "Log out" }).click();
  await tokenField.waitFor();

  check(tokenInUrls.length === 0, `the token appeared in a URL: ${tokenInUrls[0]}`);
  check(consoleErrors.length === 0, `the page logged errors: ${consoleErrors.join(" | ")}`);
  console.log("dashboard: all checks passed");
} catch (e) {
  console.error(`dashboard: failed at "${step}": ${e && e.stack ? e.stack : e}`);
  process.exitCode = 1;
} finally {
  await context.close();
}
