// A newcomer's walk through the dashboard against a running broker with the ESP8266
// simulator, taking the README's screenshots (not run by `cargo test`; see the README's
// Dashboard section):
//
//   target/release/mqtt-broker --config broker.yaml &        # a config file: the ACL edit is saved to it
//   target/release/esp8266-sim --devices 20 --interval 2s --duration 10m &
//   node tests/js/dashboard_tour.mjs http://127.0.0.1:9100/ docs/dashboard [TOKEN]
//
// It waits a minute on the overview (so that the charts have a history), opens a device,
// expands the topic tree, tails sensors/#, then adds an ACL rule from the Config page that
// hides one device from the dashboard identity, applies it, and shows the tail refused.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const [url, out, token] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node dashboard_tour.mjs URL OUTPUT_DIR [TOKEN]");
  process.exit(2);
}
fs.mkdirSync(out, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "dashboard-tour-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(15_000);
const shot = (name) => page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });
try {
  await page.goto(url);
  if (token) {
    await page.getByLabel("Admin token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
  }
  await page.locator("#card-received .value").waitFor();
  console.log("overview: waiting a minute for the charts");
  await page.waitForTimeout(60_000);
  await shot("overview");

  await page.getByRole("link", { name: "Clients" }).click();
  await page.locator("#clients-table tbody tr").first().waitFor();
  console.log(await page.locator("#client-count").textContent());
  await page.locator("#clients-table tbody tr button.link").first().click();
  await page.locator("#client-detail h3").waitFor();
  await shot("client-detail");

  await page.getByRole("link", { name: "Topics" }).click();
  await page.locator('#topic-tree li[data-path="sensors"] > details > summary').click();
  await page.locator('#topic-tree li[data-path="sensors/esp0001"] > details > summary').click();
  await page.getByLabel("Topic prefix").fill("sensors/");
  await page.getByRole("button", { name: "Show" }).click();
  await page.locator("#retained-table tbody tr").first().waitFor();
  await page.getByLabel("Topic filter").fill("sensors/#");
  await page.getByRole("button", { name: "Start live tail" }).click();
  await page.locator("#tail-messages li").nth(8).waitFor();
  await shot("topics");
  await page.getByRole("button", { name: "Stop live tail" }).click();

  await page.getByRole("link", { name: "Plugins" }).click();
  await page.locator("#plugin-list").waitFor();
  await shot("plugins");

  await page.getByRole("link", { name: "Config" }).click();
  const editor = page.getByLabel("Config file (YAML)");
  await page.locator("#reload-table tbody tr").first().waitFor();
  const text = await editor.inputValue();
  await editor.fill(`${text.trimEnd()}\nsecurity:\n  acl:\n    - {deny: subscribe, topic: "sensors/esp0001/#", user: dashboard}\n    - {allow: all, topic: "#"}\n`);
  await page.getByRole("button", { name: "Validate" }).click();
  await page.locator("#config-result", { hasText: "Valid" }).waitFor();
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("#config-result", { hasText: "Applied" }).waitFor();
  console.log(await page.locator("#config-result").textContent());
  await editor.fill(`${await editor.inputValue()}\nlimits:\n  max_subscriptions: 0\n`);
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("#config-result", { hasText: "Refused" }).waitFor();
  await shot("config-refused");

  await page.getByRole("link", { name: "Topics" }).click();
  await page.getByLabel("Topic filter").fill("sensors/esp0001/#");
  await page.getByRole("button", { name: "Start live tail" }).click();
  await page.locator("#tail-status", { hasText: "refused" }).waitFor();
  console.log(await page.locator("#tail-status").textContent());

  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("link", { name: "Overview" }).click();
  await page.locator("#card-received .value").waitFor();
  await page.waitForTimeout(3000);
  await shot("overview-phone");
  console.log("tour done");
} catch (e) {
  console.error(`tour failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
