// Open tests/player/page.html in headless Debian Chromium and print what hls.js did, as JSON.
// Usage: node play.js <page url> <timeout ms>. playwright-core drives /usr/bin/chromium (or
// $CHROMIUM): no browser is ever downloaded, and the machine's network may be closed.
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

async function main() {
  const [pageUrl, timeoutText] = process.argv.slice(2);
  const timeout = Number(timeoutText || 20000);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "reelcdn-chromium-"));
  // A fresh profile per run (launchPersistentContext is how playwright takes --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
      // PLAY_CROSS_ORIGIN=1: pathways on other origins (other ports) than the page's, which
      // the edges serve without CORS headers (tests/test_steering_player.py).
      ...(process.env.PLAY_CROSS_ORIGIN === "1" ? ["--disable-web-security"] : []),
    ],
  });
  let result;
  try {
    const page = await context.newPage();
    const console_ = [];
    const responses = [];
    page.on("console", (msg) => console_.push(msg.text()));
    page.on("response", (response) => responses.push([response.status(), response.url()]));
    // The page and hls.js come from this folder but are served at the edge's origin, so the
    // player's requests to the edge are same-origin (the edge sends no CORS headers) while
    // every playlist and segment still really travels through the edge.
    await page.route("**/player/page.html*", (route) =>
      route.fulfill({ path: path.join(__dirname, "page.html"), contentType: "text/html" }));
    await page.route("**/player/hls.min.js", (route) =>
      route.fulfill({
        path: require.resolve("hls.js/dist/hls.min.js"), contentType: "text/javascript",
      }));
    await page.goto(pageUrl);
    try {
      await page.waitForFunction(() => window.player && window.player.done, null, { timeout });
    } catch (err) {
      console_.push("timeout: " + err.message.split("\n")[0]);
    }
    result = await page.evaluate(() => window.player);
    // Frames the video element decoded (0: nothing was ever shown).
    result.videoFrames = await page.evaluate(() => {
      const quality = document.getElementById("video").getVideoPlaybackQuality();
      return quality.totalVideoFrames;
    });
    result.responses = responses;
    result.console = console_.slice(-20);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + "\n");
  process.exit(1);
});
