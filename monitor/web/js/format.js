// Numbers as people read them.

export function mib(value) {
  if (value === undefined || value === null) return "–";
  if (value >= 1024) return `${(value / 1024).toFixed(value >= 10240 ? 0 : 1)} GiB`;
  return `${Math.round(value)} MiB`;
}

export function percent(value) {
  return value === undefined || value === null ? "–" : `${Math.round(value)} %`;
}

export function celsius(value) {
  return value === undefined || value === null ? "–" : `${Math.round(value)} °C`;
}

export function watts(value) {
  return value === undefined || value === null ? "–" : `${Math.round(value)} W`;
}

export function duration(ms) {
  if (ms === undefined || ms === null) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} d`;
}

/** "3 min ago" (or "in 2 min"). */
export function ago(ms) {
  if (!ms) return "never";
  const delta = Date.now() - ms;
  if (Math.abs(delta) < 5000) return "just now";
  return delta > 0 ? `${duration(delta)} ago` : `in ${duration(-delta)}`;
}

/** A clock time, with the date when it is not today. */
export function when(ms) {
  if (!ms) return "–";
  const date = new Date(ms);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return date.toDateString() === new Date().toDateString() ? time : `${date.toLocaleDateString()} ${time}`;
}

export function number(value, digits = 0) {
  return value === undefined || value === null ? "–" : Number(value).toFixed(digits);
}
