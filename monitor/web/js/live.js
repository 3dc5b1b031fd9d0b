// One EventSource per page on /v1/stream. What arrives is queued and
// handed to the page in batches, at most four a second, so a busy fleet
// never makes the page redraw more often than people can read. A lost
// connection shows "reconnecting"; coming back, the stream replays the
// events missed since the last one seen (Last-Event-ID), and the page
// reloads what the stream does not replay (alerts, node states).

import { toLogin } from "./api.js";

const MIN_GAP_MS = 250;
const KINDS = ["event", "alert", "node"];

export class Live {
  /** `onBatch(items)` gets [{kind, data}]; `onResync()` after a gap. */
  constructor(indicator, onBatch, onResync) {
    this.indicator = indicator;
    this.onBatch = onBatch;
    this.onResync = onResync;
    this.pending = [];
    this.timer = null;
    this.lastFlush = 0;
    this.lastId = null;
    this.broken = false;
    this.retryMs = 1000;
  }

  start() {
    const url = this.lastId ? `/v1/stream?lastEventId=${encodeURIComponent(this.lastId)}` : "/v1/stream";
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.show("live", "live-on");
      this.retryMs = 1000;
      if (this.broken) {
        this.broken = false;
        this.onResync();
      }
    };
    source.onerror = () => {
      this.broken = true;
      if (source.readyState === EventSource.CLOSED) this.reopen();
      else this.show("reconnecting", "reconnecting");
    };
    for (const kind of KINDS) {
      source.addEventListener(kind, (message) => {
        if (message.lastEventId) this.lastId = message.lastEventId;
        let data;
        try {
          data = JSON.parse(message.data);
        } catch {
          return;
        }
        this.pending.push({ kind, data });
        this.schedule();
      });
    }
    source.addEventListener("lagged", () => this.onResync());
  }

  /** The browser gave up (the monitor refused the stream): try again. */
  async reopen() {
    this.show("reconnecting", "reconnecting");
    this.source.close();
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, 15000);
    setTimeout(async () => {
      try {
        const probe = await fetch("/v1/alerts?limit=1", { credentials: "same-origin" });
        if (probe.status === 401) return toLogin();
      } catch {
        // The monitor is not answering yet; the stream will say so again.
      }
      this.start();
    }, wait);
  }

  show(text, state) {
    this.indicator.textContent = text;
    this.indicator.className = `live ${state}`;
  }

  schedule() {
    if (this.timer !== null) return;
    const wait = Math.max(0, this.lastFlush + MIN_GAP_MS - performance.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }

  flush() {
    this.timer = null;
    this.lastFlush = performance.now();
    const batch = this.pending;
    this.pending = [];
    if (batch.length) this.onBatch(batch);
  }
}
