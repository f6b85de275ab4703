// The dashboard's Streams tab: streams (super streams grouped with their
// partitions) and consumer groups (committed offset, lag and owner per
// partition), read from /api/streams and /api/stream-groups.
//
// Loaded after index.html's inline script and shares its helpers ($, el,
// api, num, state); like the rest of the page it builds every cell with
// el(), so names only ever become text nodes, never markup.
"use strict";

function size(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}
// retention is set in whole units ("7D", "1h"): show it the way it was given
function span(s) {
  for (const [unit, secs] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= secs && s % secs === 0) return `${s / secs}${unit}`;
  return `${s}s`;
}
function retention(r) {
  const parts = [];
  if (r && r.max_age_seconds) parts.push(`max-age ${span(r.max_age_seconds)}`);
  if (r && r.max_bytes) parts.push(`max-bytes ${size(r.max_bytes)}`);
  return parts.join(" · ") || "unlimited";
}
// an empty stream has no first or last offset to show
const offsets = (s) => (s.messages ? [num(s.first_offset), num(s.last_offset)] : ["-", "-"]);

async function refreshStreams() {
  const [streams, groups] = await Promise.all([api("GET", "/api/streams"), api("GET", "/api/stream-groups")]);
  state.streams = streams;
  state.groups = groups;
  renderStreams();
}

// Super streams first as a summary row, each followed by its partitions;
// plain streams after them, everything by vhost then name.
function streamTree(rows) {
  const supers = new Map(), plain = [];
  for (const s of rows) {
    if (s.super_stream == null) { plain.push(s); continue; }
    const key = s.vhost + "\u0000" + s.super_stream;
    if (!supers.has(key)) supers.set(key, { vhost: s.vhost, name: s.super_stream, partitions: [] });
    supers.get(key).partitions.push(s);
  }
  const byName = (a, b) => a.vhost.localeCompare(b.vhost) || a.name.localeCompare(b.name, undefined, { numeric: true });
  const tree = [...supers.values()].sort(byName);
  for (const t of tree) t.partitions.sort(byName);
  return tree.concat(plain.sort(byName));
}

function streamCells(s, nameCell) {
  const [first, last] = offsets(s);
  return [
    nameCell, el("td", {}, s.vhost),
    el("td", { class: "num" }, first), el("td", { class: "num" }, last),
    el("td", { class: "num" }, num(s.messages)),
    el("td", { class: "num", title: num(s.bytes) + " bytes" }, size(s.bytes)),
    el("td", { class: "num" }, num(s.segments)),
    el("td", { class: "num" }, num(s.consumers)),
    el("td", { title: "segment size " + size(s.retention.segment_bytes) }, retention(s.retention)),
  ];
}

function superRow(t) {
  const total = (key) => t.partitions.reduce((sum, p) => sum + (p[key] || 0), 0);
  const kinds = new Set(t.partitions.map((p) => retention(p.retention)));
  const name = el("td", {}, t.name, el("span", { class: "tag" }, `super stream · ${t.partitions.length} partition${t.partitions.length === 1 ? "" : "s"}`));
  return el("tr", { class: "group-head", "data-super": t.name, "data-vhost": t.vhost },
    name, el("td", {}, t.vhost), el("td", {}), el("td", {}),
    el("td", { class: "num" }, num(total("messages"))),
    el("td", { class: "num", title: num(total("bytes")) + " bytes" }, size(total("bytes"))),
    el("td", { class: "num" }, num(total("segments"))),
    el("td", { class: "num" }, num(total("consumers"))),
    el("td", {}, kinds.size === 1 ? [...kinds][0] : "differs per partition"));
}

function renderStreams() {
  const filter = $("stream-filter").value.trim().toLowerCase();
  const hit = (...names) => !filter || names.some((n) => n != null && String(n).toLowerCase().includes(filter));
  const rows = [];
  let shown = 0;
  for (const t of streamTree(state.streams || [])) {
    if (!t.partitions) {
      if (!hit(t.name)) continue;
      shown++;
      rows.push(el("tr", { "data-stream": t.name, "data-vhost": t.vhost }, ...streamCells(t, el("td", {}, t.name))));
      continue;
    }
    const parts = t.partitions.filter((p) => hit(t.name, p.name));
    if (!parts.length) continue;
    shown += parts.length;
    rows.push(superRow(t));
    for (const p of parts) {
      rows.push(el("tr", { class: "partition", "data-stream": p.name, "data-vhost": p.vhost, "data-super": t.name },
        ...streamCells(p, el("td", { class: "indent" }, p.name))));
    }
  }
  $("streams-table").tBodies[0].replaceChildren(...rows);
  $("stream-count").textContent = `${shown} of ${(state.streams || []).length} stream${(state.streams || []).length === 1 ? "" : "s"}`;
  renderGroups(filter, hit);
}

// One summary row per group (total lag, members owning partitions), then
// a row per partition it reads.
function renderGroups(filter, hit) {
  const superOf = new Map((state.streams || []).map((s) => [s.vhost + "\u0000" + s.name, s.super_stream]));
  const groups = new Map();
  for (const g of state.groups || []) {
    if (!hit(g.group, g.stream, superOf.get(g.vhost + "\u0000" + g.stream))) continue;
    const key = g.vhost + "\u0000" + g.group;
    if (!groups.has(key)) groups.set(key, { vhost: g.vhost, group: g.group, rows: [] });
    groups.get(key).rows.push(g);
  }
  const rows = [];
  for (const g of groups.values()) {
    const supers = new Set(g.rows.map((r) => superOf.get(r.vhost + "\u0000" + r.stream) || r.stream));
    const owners = new Set(g.rows.map((r) => r.owner).filter((o) => o != null));
    const lag = g.rows.reduce((sum, r) => sum + r.lag, 0);
    rows.push(el("tr", { class: "group-head", "data-group": g.group, "data-vhost": g.vhost },
      el("td", {}, g.group), el("td", {}, g.vhost),
      el("td", { class: "muted" }, `${[...supers].join(", ")} · ${g.rows.length} partition${g.rows.length === 1 ? "" : "s"}`),
      el("td", {}), el("td", {}),
      el("td", { class: "num" }, num(lag)),
      el("td", { class: "muted" }, owners.size ? `${owners.size} live member${owners.size === 1 ? "" : "s"}` : "no live member")));
    for (const r of g.rows) {
      rows.push(el("tr", { class: "partition", "data-group": r.group, "data-stream": r.stream, "data-vhost": r.vhost },
        el("td", {}), el("td", {}), el("td", { class: "indent" }, r.stream),
        el("td", { class: "num" }, num(r.committed_offset)),
        el("td", { class: "num" }, r.last_offset >= 0 ? num(r.last_offset) : "-"),
        el("td", { class: "num" + (r.lag ? " lagging" : "") }, num(r.lag)),
        r.owner == null ? el("td", { class: "muted" }, "-") : el("td", {}, r.owner)));
    }
  }
  $("groups-table").tBodies[0].replaceChildren(...rows);
  const all = new Set((state.groups || []).map((g) => g.vhost + "\u0000" + g.group)).size;
  $("group-count").textContent = `${groups.size} of ${all} group${all === 1 ? "" : "s"}`;
}

$("stream-filter").addEventListener("input", () => { if (state.streams) renderStreams(); });
