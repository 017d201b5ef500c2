// Drive the origin's web page (origin/web/, served at /) in headless Debian Chromium as a
// viewer and creator would, and print what happened as JSON (tests/test_web.py).
// Usage: node web.js <page url> <user token> <file to upload> <timeout ms>.
// The page comes from the origin API and plays from the edge, another origin: every playlist,
// segment and poster request is cross-origin and needs the edge's CORS answers (no
// --disable-web-security). playwright-core drives /usr/bin/chromium (or $CHROMIUM).
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

async function main() {
  const [pageUrl, token, file, timeoutText] = process.argv.slice(2);
  const timeout = Number(timeoutText || 30000);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "reelcdn-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 720 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  const result = { steps: [], console: [], errors: [], requests: [] };
  const step = (name) => result.steps.push(name);
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    page.on("console", (msg) => {
      result.console.push(`${msg.type()}: ${msg.text()}`);
      if (msg.type() === "error") result.errors.push(msg.text());
    });
    page.on("pageerror", (err) => result.errors.push(`pageerror: ${err.message}`));
    page.on("response", (response) => {
      const request = response.request();
      result.requests.push([response.status(), request.method(), response.url()]);
    });
    // page.waitForFunction evaluates a string in the page, which the page's CSP refuses (no
    // 'unsafe-eval'), so poll with page.evaluate (the DevTools protocol's, not the page's).
    const waitFor = async (fn, arg) => {
      const deadline = Date.now() + timeout;
      for (;;) {
        const value = await page.evaluate(fn, arg);
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timeout waiting for ${String(fn)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    };
    const cards = () => page.locator("#cards > li").count();
    const settled = () => waitFor(() => !window.reelcdn.loading);

    await page.goto(pageUrl);
    await waitFor(() => window.reelcdn && window.reelcdn.ready);
    result.signedInAtStart = await page.isVisible("#whoami");
    await page.fill("#token", token);
    await page.click("#signin button[type=submit]");
    await page.waitForSelector("#cards > li");
    await settled();
    if (process.env.WEB_SCREENSHOT) await page.screenshot({ path: process.env.WEB_SCREENSHOT });
    result.username = await page.textContent("#username");
    result.cardsBeforeScroll = await cards();
    result.pagesBeforeScroll = await page.evaluate(() => window.reelcdn.pages);
    const first = page.locator("#cards > li").first();
    result.firstCard = {
      title: await first.locator(".title").textContent(),
      owner: await first.locator(".owner").textContent(),
      stats: await first.locator(".stats").textContent(),
      poster: await first.locator(".poster img").getAttribute("src"),
    };
    result.postersLoaded = await page.evaluate(() => Promise.all(
      Array.from(document.querySelectorAll(".poster img"), (img) => img.decode().then(
        () => img.naturalWidth, () => 0))));
    step("signed in");

    // Infinite scroll: the sentinel at the bottom loads the next pages.
    for (let i = 0; i < 30; i += 1) {
      const done = await page.evaluate(() => window.reelcdn.done);
      if (done) break;
      await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
      await page.waitForTimeout(250);
      await settled();
    }
    result.cardsAfterScroll = await cards();
    result.pagesAfterScroll = await page.evaluate(() => window.reelcdn.pages);
    result.cardIds = await page.$$eval("#cards > li", (items) => items.map((li) => li.dataset.id));
    result.feedState = await page.textContent("#feed-state");
    step("scrolled");

    // Like the first video: the count moves at once and the API's answer confirms it.
    await page.evaluate(() => window.scrollTo(0, 0));
    const like = first.locator(".like");
    result.likeBefore = await like.textContent();
    const liked = page.waitForResponse((r) => r.url().endsWith("/like"));
    await like.click();
    result.likeOptimistic = await like.textContent();
    result.likeStatus = (await liked).status();
    await waitFor(() => document.querySelector("#cards > li .like")
      .getAttribute("aria-pressed") === "true");
    result.likeAfter = await like.textContent();
    step("liked");

    // Follow its creator: every card of that creator says Following.
    const followed = page.waitForResponse((r) => r.url().endsWith("/follow"));
    await first.locator(".follow").click();
    result.followStatus = (await followed).status();
    result.followTexts = await page.$$eval(".follow", (buttons) => buttons
      .filter((b) => b.dataset.owner === document.querySelector(".follow").dataset.owner)
      .map((b) => b.textContent));
    step("followed");

    // Play it through the edge to its first frame.
    await first.locator(".poster").click();
    await waitFor(() => window.reelcdn.firstFrame
      && document.getElementById("video").currentTime > 0);
    result.play = await page.evaluate(() => ({
      currentTime: document.getElementById("video").currentTime,
      frames: document.getElementById("video").getVideoPlaybackQuality().totalVideoFrames,
      title: document.getElementById("player-title").textContent,
      sid: window.reelcdn.sid,
      sessionRegistered: window.reelcdn.sessionRegistered,
      hls: Boolean(window.reelcdn.hls),
    }));
    step("played");

    // Upload a file: the progress bar to 100 %, then the video's state until it plays.
    await page.setInputFiles("#upload-file", file);
    await page.fill("#upload-title", "from the web page");
    await page.fill("#upload-caption", "a caption");
    await page.fill("#upload-hashtags", "#web #test");
    await page.click("#upload-start");
    await waitFor(() => document.getElementById("upload-percent").textContent
      === "100 %");
    result.uploadProgress = await page.evaluate(() => ({
      value: document.getElementById("upload-progress").value,
      text: document.getElementById("upload-percent").textContent,
    }));
    await waitFor(() => window.reelcdn.upload && window.reelcdn.upload.id);
    result.uploadId = await page.evaluate(() => window.reelcdn.upload.id);
    result.uploadStates = [await page.textContent("#upload-state")];
    step("uploaded");
    await page.waitForSelector("#upload-play", { state: "visible" });
    result.uploadStates.push(await page.textContent("#upload-state"));
    step("playable");
    await page.click("#upload-play");
    await waitFor((id) => window.reelcdn.playing && window.reelcdn.playing.id === id
      && window.reelcdn.firstFrame && document.getElementById("video").currentTime > 0,
    result.uploadId);
    result.uploadPlayed = await page.evaluate(() => document.getElementById("video").currentTime);
    if (process.env.WEB_SCREENSHOT) {
      await page.screenshot({ path: process.env.WEB_SCREENSHOT.replace(/\.png$/, "-2.png") });
    }
    step("upload played");
    await waitFor(() => /^Ready/.test(
      document.getElementById("upload-state").textContent));
    result.uploadStates.push(await page.textContent("#upload-state"));
    step("ready");
  } catch (err) {
    result.failure = String(err && err.message || err).split("\n")[0];
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
