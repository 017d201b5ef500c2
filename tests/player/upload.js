// Upload a file with tus-js-client from a page in headless Debian Chromium, as a creator's
// browser would, and print what happened as JSON.
// Usage: node upload.js <page url> <tus endpoint> <bearer token> <file> <timeout ms>.
// The page (served by the test at an origin of its own, on loopback like the API: Chromium's
// local-network protection refuses a public page's requests to loopback) loads tus-js-client,
// so every request to the origin API is cross-origin: the API's CORS answers are exercised
// as a real browser needs them.
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

async function main() {
  const [pageUrl, endpoint, token, file, timeoutText] = process.argv.slice(2);
  const timeout = Number(timeoutText || 30000);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "reelcdn-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  let result;
  try {
    const page = await context.newPage();
    const console_ = [];
    page.on("console", (msg) => console_.push(msg.text()));
    await page.goto(pageUrl);
    await page.waitForFunction(() => typeof window.tus !== "undefined", null, { timeout });
    const data = fs.readFileSync(file).toString("base64");
    result = await page.evaluate(
      ({ endpoint, token, data, name, timeout }) => new Promise((resolve) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const blob = new Blob([bytes], { type: "video/mp4" });
        const progress = [];
        const timer = setTimeout(() => resolve({ error: "timeout", progress }), timeout);
        const upload = new tus.Upload(blob, {
          endpoint,
          headers: { Authorization: `Bearer ${token}` },
          chunkSize: 256 * 1024,
          retryDelays: [0, 500],
          metadata: { filename: name, title: "from a browser", filetype: "video/mp4" },
          onProgress: (sent, total) => progress.push([sent, total]),
          onError: (err) => { clearTimeout(timer); resolve({ error: String(err), progress }); },
          onSuccess: () => { clearTimeout(timer); resolve({ url: upload.url, progress }); },
        });
        upload.start();
      }),
      { endpoint, token, data, name: path.basename(file), timeout },
    );
    result.console = console_;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((err) => { console.error(err); process.exit(1); });
