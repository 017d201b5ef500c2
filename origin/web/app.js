// The reelcdn web page (docs/web.md): sign in with a user token, the feeds with infinite
// scroll, a player (hls.js, or the browser's own HLS) that plays through the edge, likes and
// follows, and a tus upload that follows the video until it plays. Plain script, no build:
// hls.js (window.Hls) and tus-js-client (window.tus) are loaded before it from /static/vendor/.
// Everything the API returns is put in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "reelcdn.token";
  const PAGE_SIZE = clampInt(new URLSearchParams(location.search).get("limit"), 1, 50, 12);
  const POLL_MS = 1000;
  const POLL_LIMIT = 1800;          // polls of an uploaded video's state (30 minutes)
  const $ = (id) => document.getElementById(id);

  // What the page did, for a person in the console and for the browser tests.
  const state = {
    config: null, token: null, user: null, sid: newSid(), sessionRegistered: false,
    feedType: "for_you", cursor: null, loading: false, done: false, generation: 0,
    pages: 0, items: new Map(), following: new Set(), liked: new Set(),
    hls: null, playing: null, firstFrame: false,
    upload: null,
  };
  window.reelcdn = state;

  function clampInt(text, min, max, fallback) {
    const n = Number.parseInt(text || "", 10);
    return Number.isInteger(n) && n >= min && n <= max ? n : fallback;
  }

  // A CMCD session id for this page session: 32 hex digits (crypto.randomUUID needs a
  // secure context; getRandomValues does not).
  function newSid() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function notice(text, isError) {
    const el = $("notice");
    el.textContent = text || "";
    el.classList.toggle("error", Boolean(isError));
  }

  // -- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail || code || `HTTP ${status}`);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      signOut("Your token was refused (expired or wrong): sign in again.");
      throw new ApiError(401, "unauthorized", "signed out");
    }
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      throw new ApiError(response.status, data && data.error, data && data.detail);
    }
    return data;
  }

  function edgeUrl(path) {
    const base = state.config && state.config.playback_base;
    return base && path ? base + path : null;
  }

  // -- signing in ------------------------------------------------------------------------------

  function userOf(token) {
    // NAME.EXP.KID.SIG: the name is what comes before the first dot.
    const name = token.split(".")[0];
    return /^[A-Za-z0-9_-]{1,64}$/.test(name) ? name : null;
  }

  function signIn(token) {
    const user = userOf(token);
    if (!user || token.split(".").length !== 4) {
      notice("That is not a user token (NAME.EXP.KID.SIG).", true);
      return;
    }
    state.token = token;
    state.user = user;
    try { localStorage.setItem(TOKEN_KEY, token); } catch (_) { /* storage off: this tab only */ }
    $("signin").hidden = true;
    $("whoami").hidden = false;
    $("username").textContent = user;
    $("app").hidden = false;
    notice("");
    registerSession();
    selectFeed(state.feedType);
  }

  function signOut(message) {
    try { localStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
    state.token = state.user = null;
    state.sessionRegistered = false;
    state.liked.clear();  // another user may sign in next
    state.following.clear();
    stopPlayer();
    state.generation += 1;
    $("app").hidden = true;
    $("whoami").hidden = true;
    $("signin").hidden = false;
    $("token").value = "";
    $("cards").replaceChildren();
    notice(message || "");
  }

  // The CMCD sid hls.js sends is registered as this user's, so the plays the edges count
  // under it mark videos seen (docs/feed.md). Another user holding it: take a new one.
  async function registerSession() {
    for (let attempt = 0; attempt < 3 && state.token; attempt += 1) {
      try {
        await api("POST", `/api/v1/sessions/${state.sid}`);
        state.sessionRegistered = true;
        return;
      } catch (err) {
        if (err.status !== 409) return;
        state.sid = newSid();
      }
    }
  }

  // -- the feed --------------------------------------------------------------------------------

  function selectFeed(feedType) {
    state.feedType = feedType;
    state.generation += 1;
    state.cursor = null;
    state.done = false;
    state.loading = false;
    state.pages = 0;
    state.items.clear();
    $("cards").replaceChildren();
    $("feed-state").textContent = "";
    for (const tab of document.querySelectorAll("[data-feed]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.feed === feedType));
    }
    loadPage();
  }

  async function loadPage() {
    if (state.loading || state.done || !state.token) return;
    const generation = state.generation;
    state.loading = true;
    $("feed-state").textContent = "Loading…";
    const query = new URLSearchParams({ feed_type: state.feedType, limit: String(PAGE_SIZE) });
    if (state.cursor) query.set("cursor", state.cursor);
    try {
      const page = await api("GET", `/api/v1/feed?${query}`);
      if (generation !== state.generation) return;   // another tab was chosen meanwhile
      state.pages += 1;
      for (const item of page.items) {
        if (state.items.has(item.id)) continue;
        state.items.set(item.id, item);
        $("cards").append(card(item));
      }
      state.cursor = page.next_cursor;
      state.done = !page.next_cursor;
      $("feed-state").textContent = state.done
        ? (state.items.size ? "That's all for now." : emptyText(state.feedType)) : "";
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.code === "cursor_expired") {              // the feed session ended: start over
        selectFeed(state.feedType);
        return;
      }
      $("feed-state").textContent = `Could not load the feed: ${err.message}`;
      state.done = true;
    } finally {
      if (generation === state.generation) state.loading = false;
    }
    // The sentinel may still be in view (a short page, a tall window): go on.
    if (generation === state.generation && !state.done && sentinelVisible()) loadPage();
  }

  function emptyText(feedType) {
    return {
      following: "Nothing here yet: follow creators from the For you feed.",
      trending: "Nothing is trending yet: videos trend once they are watched.",
    }[feedType] || "No videos yet: upload one.";
  }

  function sentinelVisible() {
    const box = $("sentinel").getBoundingClientRect();
    return box.top < window.innerHeight + 200;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  function count(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  function card(item) {
    const poster = el("button", { class: "poster", type: "button",
                                  "aria-label": `Play ${item.title || item.id}` });
    const src = edgeUrl(item.poster);
    if (src) {
      const img = el("img", { alt: "", loading: "lazy", src });
      img.addEventListener("error", () => img.remove());   // no poster published: the tile
      poster.append(img);
    }
    poster.append(el("span", { class: "duration",
                               text: item.duration ? formatDuration(item.duration) : "" }));
    poster.addEventListener("click", () => play(item));

    const likes = el("button", { class: "like", type: "button", "aria-pressed": "false" });
    const follow = el("button", { class: "follow", type: "button", "aria-pressed": "false",
                                  "data-owner": item.owner });
    const views = el("span", { class: "views" });
    const li = el("li", { class: "card", "data-id": item.id },
      poster,
      el("h3", { class: "title", text: item.title || "(untitled)" }),
      el("p", { class: "meta" }, el("span", { class: "owner", text: `@${item.owner}` }), " ",
         follow),
      el("p", { class: "meta stats" }, views, " · ", likes));
    item.card = li;
    // Each page says what the viewer likes and follows as of its request (read afresh, not
    // cached), so it is taken as is; a page never lists a video twice in a feed session.
    const marks = item.viewer || {};
    if (marks.liked) state.liked.add(item.id); else state.liked.delete(item.id);
    if (marks.following) state.following.add(item.owner);
    renderStats(item);
    renderFollow(follow, item.owner);
    likes.addEventListener("click", () => toggleLike(item));
    follow.addEventListener("click", () => toggleFollow(item.owner));
    if (item.owner === state.user) follow.hidden = true;
    return li;
  }

  function formatDuration(seconds) {
    const s = Math.round(seconds);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function renderStats(item) {
    const liked = state.liked.has(item.id);
    item.card.querySelector(".views").textContent = count(item.stats.views, "view", "views");
    const button = item.card.querySelector(".like");
    button.textContent = `${liked ? "♥" : "♡"} ${count(item.stats.likes, "like", "likes")}`;
    button.setAttribute("aria-pressed", String(liked));
    if (state.playing && state.playing.id === item.id) renderPlayerMeta(item);
  }

  function renderFollow(button, owner) {
    const following = state.following.has(owner);
    button.textContent = following ? "Following" : "Follow";
    button.setAttribute("aria-pressed", String(following));
  }

  // Likes and follows are changed on the page at once and set right (or undone) when the
  // API answers (its count replaces the guess). Each feed item says whether the viewer
  // likes it and follows its owner, so the buttons start right.
  async function toggleLike(item) {
    const like = !state.liked.has(item.id);
    const before = item.stats.likes;
    if (like) state.liked.add(item.id); else state.liked.delete(item.id);
    item.stats.likes = Math.max(0, before + (like ? 1 : -1));
    renderStats(item);
    try {
      const answer = await api(like ? "POST" : "DELETE", `/api/v1/videos/${item.id}/like`);
      item.stats.likes = answer.likes;
    } catch (err) {
      if (like) state.liked.delete(item.id); else state.liked.add(item.id);
      item.stats.likes = before;
      notice(`Could not ${like ? "like" : "unlike"} the video: ${err.message}`, true);
    }
    renderStats(item);
  }

  async function toggleFollow(owner) {
    const follow = !state.following.has(owner);
    const render = () => {
      for (const button of document.querySelectorAll(".follow")) {
        if (button.dataset.owner === owner) renderFollow(button, owner);
      }
    };
    if (follow) state.following.add(owner); else state.following.delete(owner);
    render();
    try {
      await api(follow ? "POST" : "DELETE", `/api/v1/users/${encodeURIComponent(owner)}/follow`);
    } catch (err) {
      if (follow) state.following.delete(owner); else state.following.add(owner);
      notice(`Could not ${follow ? "follow" : "unfollow"} ${owner}: ${err.message}`, true);
    }
    render();
  }

  // -- the player ------------------------------------------------------------------------------

  function stopPlayer() {
    if (state.hls) {
      state.hls.destroy();
      state.hls = null;
    }
    const video = $("video");
    video.pause();
    video.removeAttribute("src");
    video.load();
    state.playing = null;
  }

  function renderPlayerMeta(item) {
    const parts = [`@${item.owner}`];
    if (item.stats) {
      parts.push(count(item.stats.views, "view", "views"), count(item.stats.likes, "like", "likes"));
    }
    $("player-meta").textContent = parts.join(" · ");
  }

  function play(item) {
    const url = edgeUrl(item.playback);
    if (!url) {
      notice(state.config && state.config.playback_base
        ? "This video is not playable yet." : "The origin has no [api] playback_base.", true);
      return;
    }
    stopPlayer();
    state.playing = item;
    state.firstFrame = false;
    $("player").hidden = false;
    $("player-title").textContent = item.title || "(untitled)";
    renderPlayerMeta(item);
    $("player-state").textContent = "Loading…";
    const video = $("video");
    const shown = () => {
      if (state.playing !== item) return;
      state.firstFrame = true;
      $("player-state").textContent = "";
    };
    if ("requestVideoFrameCallback" in video) {
      video.requestVideoFrameCallback(shown);
    } else {
      video.addEventListener("timeupdate", shown, { once: true });
    }
    if (window.Hls && window.Hls.isSupported()) {
      // CMCD in the query (no custom headers: no CORS preflight per segment); the sid is
      // the one registered with the API.
      const hls = new window.Hls({ cmcd: { sessionId: state.sid, useHeaders: false } });
      state.hls = hls;
      hls.on(window.Hls.Events.ERROR, (_event, data) => {
        if (!data.fatal || state.hls !== hls) return;
        if (data.type === window.Hls.ErrorTypes.NETWORK_ERROR) {
          $("player-state").textContent = "Network error: retrying…";
          hls.startLoad();
        } else if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else {
          $("player-state").textContent = `Cannot play this video (${data.details}).`;
          hls.destroy();
          state.hls = null;
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      // Safari's own HLS: the sid on the master playlist's request only (it sends no CMCD).
      video.src = `${url}?CMCD=${encodeURIComponent(`sid="${state.sid}"`)}`;
    } else {
      $("player-state").textContent = "This browser cannot play HLS.";
      return;
    }
    video.play().catch(() => {
      $("player-state").textContent = "Press play to start.";
    });
    $("player").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  // -- uploads ---------------------------------------------------------------------------------

  function uploadState(text) {
    $("upload-state").textContent = text;
  }

  function setProgress(sent, total) {
    const percent = total ? Math.floor((sent / total) * 100) : 0;
    $("upload-progress").value = percent;
    $("upload-percent").textContent = `${percent} %`;
  }

  function startUpload(event) {
    event.preventDefault();
    const file = $("upload-file").files[0];
    if (!file || !window.tus) return;
    const max = state.config && state.config.max_upload_size;
    if (max && file.size > max) {
      uploadState(`That file is larger than the largest upload (${max} bytes).`);
      return;
    }
    const metadata = { filename: file.name, filetype: file.type || "application/octet-stream" };
    for (const name of ["title", "caption", "hashtags"]) {
      const value = $(`upload-${name}`).value.trim();
      if (value) metadata[name] = value;
    }
    $("upload-start").disabled = true;
    $("upload-play").hidden = true;
    $("upload-progress-box").hidden = false;
    setProgress(0, file.size);
    uploadState("Uploading…");
    const endpoint = new URL(state.config.uploads, location.href).href;
    const upload = new window.tus.Upload(file, {
      endpoint,
      headers: { Authorization: `Bearer ${state.token}` },
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000],
      removeFingerprintOnSuccess: true,
      metadata,
      onProgress: (sent, total) => setProgress(sent, total),
      onError: (err) => {
        $("upload-start").disabled = false;
        uploadState(`Upload failed: ${err.message || err}`);
      },
      onSuccess: () => {
        $("upload-start").disabled = false;
        setProgress(file.size, file.size);
        const id = upload.url.split("/").pop();
        state.upload = { id, status: "uploaded", playback: null };
        uploadState("Uploaded: processing…");
        follow(id, metadata.title || file.name);
      },
    });
    state.upload = { id: null, status: "uploading", playback: null };
    upload.start();
  }

  // Poll the video's state until it plays (processing with a playback path: its first
  // rendition is published), then until it is ready (or failed).
  async function follow(id, title) {
    for (let polls = 0; polls < POLL_LIMIT && state.token; polls += 1) {
      let video;
      try {
        video = await api("GET", `/api/v1/videos/${id}`);
      } catch (err) {
        uploadState(`Cannot read the video's state: ${err.message}`);
        return;
      }
      if (!state.upload || state.upload.id !== id) return;   // another upload since
      state.upload.status = video.status;
      if (video.playback && !state.upload.playback) {
        state.upload.playback = video.playback;
        const button = $("upload-play");
        button.hidden = false;
        button.onclick = () => play({
          id, title: video.title || title, owner: video.owner, playback: video.playback,
          stats: null,
        });
      }
      if (video.status === "ready") {
        uploadState("Ready: every rendition is published.");
        return;
      }
      if (video.status === "failed") {
        uploadState(`Processing failed: ${video.error || "unknown reason"}`);
        return;
      }
      uploadState(video.playback
        ? "Playable: the first rendition is up, the others are encoding…"
        : `${video.status === "uploading" ? "Uploading" : "Processing"}…`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  // -- start -----------------------------------------------------------------------------------

  async function start() {
    $("signin").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("token").value.trim());
    });
    $("signout").addEventListener("click", () => signOut("Signed out."));
    for (const tab of document.querySelectorAll("[data-feed]")) {
      tab.addEventListener("click", () => selectFeed(tab.dataset.feed));
    }
    $("upload-form").addEventListener("submit", startUpload);
    new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) loadPage();
    }, { rootMargin: "200px" }).observe($("sentinel"));
    try {
      const response = await fetch("/api/v1/config", { cache: "no-store" });
      state.config = await response.json();
    } catch (err) {
      notice(`Cannot read the page's configuration: ${err.message}`, true);
      return;
    }
    if (!state.config.playback_base) {
      notice("This origin has no [api] playback_base: videos cannot be played.", true);
    }
    let saved = null;
    try { saved = localStorage.getItem(TOKEN_KEY); } catch (_) { /* storage off */ }
    if (saved) signIn(saved);
    state.ready = true;
  }

  start();
}());
