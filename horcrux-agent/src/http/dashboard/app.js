// Horcrux dashboard: live over /ws, seeded from the REST and history APIs.
'use strict';

const MAX_POINTS = 600;
const SPARK_POINTS = 30;
const $ = (selector) => document.querySelector(selector);

const state = {
  series: { cpu: [], memory: [], disk: [], load: [], rx: [], tx: [] },
  containers: new Map(), // id -> summary row + cpu history
  vms: new Map(),
  sort: { key: 'cpu', dir: -1 },
  filter: '',
  selected: null,
  active: new Map(), // rule|target -> alert
  resolved: [],
  memoryTotal: null,
};

// ---- formatting -------------------------------------------------------------
function bytes(n) {
  if (n == null || !isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 || Math.abs(n) >= 100 ? 0 : 1)} ${units[i]}`;
}
const rate = (n) => (n == null ? '—' : `${bytes(n)}/s`);
const percent = (n) => (n == null || !isFinite(n) ? '—' : `${n.toFixed(1)} %`);
const clock = (ts) => new Date(ts * 1000).toLocaleTimeString();
function micros(us) {
  if (us == null) return '—';
  if (us >= 1e6) return `${(us / 1e6).toFixed(1)} s`;
  if (us >= 1e3) return `${(us / 1e3).toFixed(1)} ms`;
  return `${Math.round(us)} µs`;
}
function escapeHtml(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// ---- charts -------------------------------------------------------------------
function push(list, point) {
  list.push(point);
  if (list.length > MAX_POINTS) list.splice(0, list.length - MAX_POINTS);
}

function drawChart(canvas, lines, fixedMax) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio;
  const height = canvas.clientHeight * ratio;
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  const all = lines.flatMap((line) => line.points);
  if (all.length < 2) return;
  const t0 = Math.min(...all.map((p) => p.t));
  const t1 = Math.max(...all.map((p) => p.t));
  const max = fixedMax ?? Math.max(1e-9, ...all.map((p) => p.v)) * 1.1;
  ctx.strokeStyle = '#2a3641';
  ctx.lineWidth = ratio;
  ctx.beginPath(); ctx.moveTo(0, height - 0.5); ctx.lineTo(width, height - 0.5); ctx.stroke();
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.5 * ratio;
    ctx.beginPath();
    line.points.forEach((p, i) => {
      const x = t1 === t0 ? width : ((p.t - t0) / (t1 - t0)) * width;
      const y = height - (Math.min(p.v, max) / max) * (height - 4 * ratio) - 2 * ratio;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function drawCharts() {
  const s = state.series;
  drawChart($('#cpu-chart'), [{ points: s.cpu, color: '#4fb3ff' }], 100);
  drawChart($('#memory-chart'), [{ points: s.memory, color: '#3ecf8e' }], 100);
  drawChart($('#disk-chart'), [{ points: s.disk, color: '#ffb347' }], 100);
  drawChart($('#load-chart'), [{ points: s.load, color: '#c792ea' }]);
  drawChart($('#network-chart'), [{ points: s.rx, color: '#4fb3ff' }, { points: s.tx, color: '#ffb347' }]);
}

function sparkline(values) {
  const points = values.filter((v) => v != null);
  if (points.length < 2) return '';
  const max = Math.max(1, ...points);
  const step = 60 / (points.length - 1);
  const path = points.map((v, i) => `${(i * step).toFixed(1)},${(18 - (v / max) * 16).toFixed(1)}`).join(' ');
  return `<svg class="spark" width="60" height="20" viewBox="0 0 60 20"><polyline fill="none" stroke="#4fb3ff" stroke-width="1.5" points="${path}"/></svg>`;
}

// ---- node ---------------------------------------------------------------------
function onNodeMetrics(m) {
  const t = m.timestamp;
  $('#hostname').textContent = m.node_id;
  $('#cpu-value').textContent = percent(m.cpu_usage);
  $('#memory-value').textContent = percent(m.memory_usage);
  $('#disk-value').textContent = percent(m.disk_usage);
  $('#load-value').textContent = m.load_averages.map((v) => v.toFixed(2)).join(' · ');
  $('#network-value').textContent = `↓ ${rate(m.network_rx_bytes_per_second)} ↑ ${rate(m.network_tx_bytes_per_second)}`;
  $('#updated').textContent = clock(t);
  $('#updated').dataset.timestamp = t;
  push(state.series.cpu, { t, v: m.cpu_usage });
  push(state.series.memory, { t, v: m.memory_usage });
  push(state.series.disk, { t, v: m.disk_usage });
  push(state.series.load, { t, v: m.load_averages[0] });
  if (m.network_rx_bytes_per_second != null) {
    push(state.series.rx, { t, v: m.network_rx_bytes_per_second });
    push(state.series.tx, { t, v: m.network_tx_bytes_per_second });
  }
  drawCharts();
}

async function seedNodeHistory() {
  const wanted = { cpu: 'cpu_usage', memory: 'memory_usage', disk: 'disk_usage', load: 'load_average_1m',
    rx: 'network_rx_bytes_per_second', tx: 'network_tx_bytes_per_second' };
  for (const [key, metric] of Object.entries(wanted)) {
    try {
      const response = await fetch(`/api/monitoring/node/history?metric=${metric}&range=900`);
      if (!response.ok) return; // history disabled: the charts start empty
      const body = await response.json();
      const seeded = body.points.map((p) => ({ t: p.timestamp, v: p.value ?? p.avg }));
      state.series[key] = seeded.concat(state.series[key].filter((p) => p.t > (seeded.at(-1)?.t ?? 0)));
    } catch (error) {
      console.warn('history', metric, error);
    }
  }
  drawCharts();
}

// ---- containers and VMs -------------------------------------------------------------
// Both arrive as VmMetrics / VmStatusChanged messages; `kind` tells them apart.
const kinds = {
  container: {
    rows: state.containers, table: '#containers', count: '#container-count', empty: 'no containers',
    api: '/api/containers', list: (body) => body.containers,
    fields: (c) => ({
      name: c.name, runtime: c.runtime, state: c.state, cpu: c.cpu_usage_percent, memory: c.memory_usage_bytes,
      read: c.block_read_bytes, write: c.block_write_bytes, rx: c.network_rx_bytes, tx: c.network_tx_bytes,
    }),
    cells: (c) => `<td>${escapeHtml(c.runtime)}</td><td>${escapeHtml(c.state ?? '')}</td>`,
    render: renderContainerDetail,
  },
  vm: {
    rows: state.vms, table: '#vms', count: '#vm-count', empty: 'no VMs',
    api: '/api/vms', list: (body) => body.vms,
    fields: (v) => ({
      name: v.name, runtime: v.source, state: v.state, cpu: v.cpu_usage_percent, memory: v.memory_usage_bytes,
      steal: v.steal_percent, vcpus: v.vcpus,
      read: v.block_read_bytes, write: v.block_write_bytes, rx: v.network_rx_bytes, tx: v.network_tx_bytes,
    }),
    cells: (v) => `<td>${escapeHtml(v.runtime)}</td><td>${escapeHtml(v.state ?? '')}</td>
      <td class="num">${v.vcpus ?? '—'}</td><td class="num steal">${percent(v.steal)}</td>`,
    render: renderVmDetail,
  },
};
const kindOf = (m) => (m.kind === 'vm' ? 'vm' : 'container');

function upsert(kind, id, fields) {
  const rows = kinds[kind].rows;
  const row = rows.get(id) ?? { id, cpuHistory: [] };
  Object.assign(row, fields);
  rows.set(id, row);
  return row;
}

function onVmMetrics(m) {
  const kind = kindOf(m);
  const row = upsert(kind, m.vm_id, {
    name: m.name, runtime: m.runtime, cpu: m.cpu_usage, memory: m.memory_usage_bytes,
    read: m.disk_read, write: m.disk_write, rx: m.network_rx, tx: m.network_tx,
  });
  row.state = row.state ?? 'running';
  row.cpuHistory.push(m.cpu_usage);
  if (row.cpuHistory.length > SPARK_POINTS) row.cpuHistory.shift();
  scheduleTable(kind);
}

function onStatusChanged(m) {
  const kind = kindOf(m);
  if (m.new_status == null) {
    kinds[kind].rows.delete(m.vm_id);
    if (state.selected?.id === m.vm_id && state.selected.kind === kind) closeDetail();
  } else {
    upsert(kind, m.vm_id, { name: m.name, runtime: m.runtime, state: m.new_status });
  }
  scheduleTable(kind);
}

async function loadRows(kind) {
  const response = await fetch(kinds[kind].api);
  if (!response.ok) return;
  for (const item of kinds[kind].list(await response.json())) upsert(kind, item.id, kinds[kind].fields(item));
  scheduleTable(kind);
}

const sortValue = {
  name: (c) => (c.name ?? c.id).toLowerCase(),
  runtime: (c) => c.runtime, state: (c) => c.state,
  cpu: (c) => c.cpu ?? -1, memory: (c) => c.memory ?? -1, steal: (c) => c.steal ?? -1, vcpus: (c) => c.vcpus ?? -1,
  disk: (c) => (c.read ?? 0) + (c.write ?? 0), network: (c) => (c.rx ?? 0) + (c.tx ?? 0),
};

const tablePending = new Set();
function scheduleTable(kind) {
  if (tablePending.has(kind)) return;
  tablePending.add(kind);
  requestAnimationFrame(() => { tablePending.delete(kind); renderTable(kind); });
}

function renderTable(kind) {
  const { rows: all, table, count, empty, cells } = kinds[kind];
  const filter = state.filter.toLowerCase();
  const rows = [...all.values()].filter((c) =>
    !filter || [c.id, c.name, c.runtime].some((field) => field && field.toLowerCase().includes(filter)));
  const key = sortValue[state.sort.key] ?? sortValue.cpu;
  rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * state.sort.dir);
  $(count).textContent = `(${rows.length})`;
  const columns = $(`${table} thead tr`).children.length;
  $(`${table} tbody`).innerHTML = rows.map((c) => `
    <tr data-id="${escapeHtml(c.id)}" data-kind="${kind}">
      <td>${escapeHtml(c.name ?? '')}<div class="id">${escapeHtml(c.id.slice(0, 12))}</div></td>
      ${cells(c)}
      <td class="num cpu">${percent(c.cpu)}${sparkline(c.cpuHistory)}</td>
      <td class="num">${bytes(c.memory)}</td>
      <td class="num">${bytes(c.read)} / ${bytes(c.write)}</td>
      <td class="num">${bytes(c.rx)} / ${bytes(c.tx)}</td>
    </tr>`).join('') || `<tr><td colspan="${columns}" class="muted">${empty}</td></tr>`;
  document.querySelectorAll(`${table} th`).forEach((th) => {
    th.classList.toggle('sorted', th.dataset.key === state.sort.key);
    th.classList.toggle('asc', th.dataset.key === state.sort.key && state.sort.dir === 1);
  });
}

const renderTables = () => Object.keys(kinds).forEach(renderTable);

// ---- detail -------------------------------------------------------------------------
function histogram(h, title) {
  if (!h || !h.buckets || h.buckets.length === 0 || h.count === 0) return `<h2>${title}</h2><p class="muted">no samples</p>`;
  // Buckets are cumulative (Prometheus "le"): difference them for bars.
  const counts = h.buckets.map((b, i) => b.count - (i ? h.buckets[i - 1].count : 0));
  const max = Math.max(1, ...counts);
  const mean = h.count ? h.sum / h.count : null;
  return `<h2>${title}</h2>
    <div class="histogram">${counts.map((c, i) => `<div title="≤ ${micros(h.buckets[i].le)}: ${c}" data-height="${(c / max) * 100}"></div>`).join('')}</div>
    <div class="histogram-labels"><span>${micros(h.buckets[0].le)}</span><span>mean ${micros(mean)} · ${h.count} samples</span><span>${micros(h.buckets.at(-1).le)}</span></div>`;
}

function list(rows) {
  return `<dl>${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('')}</dl>`;
}

const unavailable = (c, family) => `<p class="muted">${escapeHtml(c.unavailable?.[family] ?? 'unavailable')}</p>`;

function latencyHistograms(ebpf) {
  return `<div>${ebpf ? histogram(ebpf.sched?.runq_latency, 'Run-queue latency') : '<h2>Run-queue latency</h2><p class="muted">needs the eBPF scheduler programs and a cgroup of its own</p>'}</div>
    <div>${ebpf ? histogram(ebpf.blkio?.latency, 'Block I/O latency') : '<h2>Block I/O latency</h2><p class="muted">needs the eBPF block-I/O programs and a cgroup of its own</p>'}</div>`;
}

// Recent OOM kills of a container or VM (eBPF OOM family), newest first.
function oomKills(target) {
  const kills = target.oom_kills ?? [];
  return `<div class="oom-kills"><h2>OOM kills</h2>${kills.length ? `<ul>${kills.map((k) => `<li>${clock(k.timestamp)}
      <b>${escapeHtml(k.comm)}</b> (pid ${k.pid}) · ${escapeHtml(k.constraint)} · RSS ${bytes(k.rss_bytes)}</li>`).join('')}</ul>`
    : '<p class="muted">none since the agent started</p>'}</div>`;
}

function renderContainerDetail(c) {
  $('#detail-title').textContent = `${c.name ?? c.id.slice(0, 12)} · ${c.runtime} · ${c.state}`;
  const cpu = c.cpu ?? {};
  const mem = c.memory ?? {};
  const block = c.block_io;
  const net = c.network;
  return `
    <div><h2>CPU</h2>${list([
      ['usage', percent(c.cpu_usage_percent)], ['user / system', `${percent(cpu.user_percent)} / ${percent(cpu.system_percent)}`],
      ['limit', cpu.limit_cores == null ? 'unlimited' : `${cpu.limit_cores} CPUs`],
      ['throttled', cpu.throttling ? `${cpu.throttling.throttled_periods_total} of ${cpu.throttling.periods_total} periods` : '—'],
    ])}</div>
    <div><h2>Memory</h2>${list([
      ['usage', bytes(mem.usage_bytes)], ['limit', mem.limit_bytes == null ? 'unlimited' : bytes(mem.limit_bytes)],
      ['working set', bytes(mem.working_set_bytes)], ['anon / file', `${bytes(mem.anon_bytes)} / ${bytes(mem.file_bytes)}`],
      ['OOM kills', mem.oom_kills_total ?? '—'],
    ])}</div>
    <div><h2>Block I/O</h2>${block ? list([
      ['read', `${bytes(block.read_bytes_total)} (${rate(block.read_bytes_per_second)})`],
      ['written', `${bytes(block.write_bytes_total)} (${rate(block.write_bytes_per_second)})`],
      ['ops r / w', `${block.reads_total} / ${block.writes_total}`],
    ]) : unavailable(c, 'block_io')}${c.ebpf?.blkio?.writeback_bytes != null ? list([
      ['page cache dirtied', bytes(c.ebpf.blkio.dirtied_bytes)],
      ['written back for it', bytes(c.ebpf.blkio.writeback_bytes)],
    ]) : ''}</div>
    <div><h2>Network</h2>${net ? list([
      ['rx', `${bytes(net.rx_bytes_total)} (${rate(net.rx_bytes_per_second)})`],
      ['tx', `${bytes(net.tx_bytes_total)} (${rate(net.tx_bytes_per_second)})`],
      ['interfaces', net.interfaces.map((i) => escapeHtml(i.interface)).join(', ')],
    ]) : unavailable(c, 'network')}</div>
    ${oomKills(c)}
    ${latencyHistograms(c.ebpf)}`;
}

// Per-vCPU bars: on-CPU and run-queue wait (steal) as % of one host CPU.
function vcpuBars(vcpus) {
  if (!vcpus?.length) return '<p class="muted">no vCPU threads found</p>';
  return `<div class="vcpus">${vcpus.map((v) => `
    <div class="vcpu" data-vcpu="${v.index}"><span>vCPU ${v.index}</span>
      <div class="bar"><div class="used" data-width="${Math.min(100, v.usage_percent ?? 0)}"></div></div><span class="num">${percent(v.usage_percent)}</span>
      <div class="bar"><div class="stolen" data-width="${Math.min(100, v.steal_percent ?? 0)}"></div></div><span class="num steal">${percent(v.steal_percent)}</span>
    </div>`).join('')}</div>
    <div class="histogram-labels"><span>■ on CPU</span><span class="stolen-label">■ waiting for a host CPU (steal)</span></div>`;
}

function renderVmDetail(v) {
  $('#detail-title').textContent = `${v.name ?? v.id} · ${v.source} · ${v.state}`;
  const cpu = v.cpu ?? {};
  const mem = v.memory ?? {};
  const kvm = v.kvm;
  const disks = v.disks ?? [];
  const nics = v.interfaces ?? [];
  return `
    <div><h2>CPU</h2>${v.cpu ? list([
      ['usage', percent(v.cpu_usage_percent)], ['steal', percent(cpu.steal_percent)],
      ['vCPU / emulator time', `${cpu.vcpu_seconds_total?.toFixed(1)} s / ${cpu.emulator_seconds_total?.toFixed(1)} s`],
    ]) + vcpuBars(cpu.vcpus) : unavailable(v, 'cpu')}</div>
    <div><h2>Memory</h2>${list([
      ['configured', bytes(mem.configured_bytes)], ['balloon', bytes(mem.balloon_actual_bytes)],
      ['host RSS', bytes(mem.rss_bytes)],
      ['guest available / unused', mem.guest ? `${bytes(mem.guest.available_bytes)} / ${bytes(mem.guest.unused_bytes)}` : '—'],
    ])}</div>
    <div><h2>Disks</h2>${disks.length ? list(disks.map((d) => [escapeHtml(d.device),
      `r ${bytes(d.read_bytes_total)} · w ${bytes(d.write_bytes_total)} · ${d.read_ops_total} / ${d.write_ops_total} ops`]))
      : unavailable(v, 'disks')}</div>
    <div><h2>Interfaces</h2>${nics.length ? list(nics.map((n) => [escapeHtml(n.device),
      `rx ${bytes(n.rx_bytes_total)} · tx ${bytes(n.tx_bytes_total)}`])) : '<p class="muted">none found</p>'}</div>
    <div><h2>KVM</h2>${kvm ? list([
      ['exits', kvm.exits], ['halt exits', kvm.halt_exits], ['halt wait', `${(kvm.halt_wait_ns / 1e9).toFixed(1)} s`],
      ['halt poll ok / fail', `${(kvm.halt_poll_success_ns / 1e9).toFixed(2)} s / ${(kvm.halt_poll_fail_ns / 1e9).toFixed(2)} s`],
      ['interrupts injected', kvm.irq_injections],
    ]) : unavailable(v, 'kvm')}</div>
    ${oomKills(v)}
    ${latencyHistograms(v.ebpf)}`;
}

async function refreshDetail() {
  if (!state.selected) return;
  const { id, kind } = state.selected;
  const response = await fetch(`${kinds[kind].api}/${encodeURIComponent(id)}/metrics`);
  if (!response.ok || state.selected?.id !== id) return;
  $('#detail-body').innerHTML = kinds[kind].render(await response.json());
  // Sizes through the CSSOM: the page's CSP allows no inline style attributes.
  for (const bar of $('#detail-body').querySelectorAll('[data-height]')) bar.style.height = `${bar.dataset.height}%`;
  for (const bar of $('#detail-body').querySelectorAll('[data-width]')) bar.style.width = `${bar.dataset.width}%`;
}

function openDetail(id, kind) {
  state.selected = { id, kind };
  $('#detail').hidden = false;
  refreshDetail();
}

function closeDetail() {
  state.selected = null;
  $('#detail').hidden = true;
}

// ---- alerts ---------------------------------------------------------------------
function renderAlerts() {
  const active = [...state.active.values()];
  const who = (a) => escapeHtml(a.target_name ?? (a.scope === 'container' ? a.target.slice(0, 12) : a.target));
  const items = active.map((a) => `<li class="${escapeHtml(a.severity)}"><b>${escapeHtml(a.rule)}</b> ${who(a)}:
      ${escapeHtml(a.metric)} ${a.value.toFixed(2)} ${escapeHtml(a.op)} ${a.threshold} since ${clock(a.since)}</li>`)
    .concat(state.resolved.slice(0, 5).map((a) => `<li class="resolved ${escapeHtml(a.severity)}">resolved ${clock(a.resolved_at)}:
      ${escapeHtml(a.rule)} ${who(a)}</li>`));
  $('#alerts').innerHTML = items.join('') || '<li class="muted">no active alerts</li>';
}

function onAlert(a) {
  const key = `${a.rule}|${a.target}`;
  if (a.type === 'AlertTriggered') state.active.set(key, a);
  else { state.active.delete(key); state.resolved.unshift(a); state.resolved.length = Math.min(state.resolved.length, 20); }
  renderAlerts();
}

async function loadAlerts() {
  const response = await fetch('/api/alerts');
  if (!response.ok) return;
  const body = await response.json();
  state.active = new Map(body.active.map((a) => [`${a.rule}|${a.target}`, a]));
  state.resolved = body.resolved;
  renderAlerts();
}

// ---- push export status ----------------------------------------------------------
// One line per push target (remote_write, OTLP): healthy (acknowledged within three pushes'
// worth of time and nothing dropped lately) or what is wrong, with the backlog.
async function loadExport() {
  const response = await fetch('/api/status');
  if (!response.ok) return;
  const targets = (await response.json()).exports || [];
  const element = $('#export');
  element.hidden = targets.length === 0;
  const now = Date.now() / 1000;
  const lines = targets.map((t) => {
    const ago = t.last_success == null ? null : Math.max(0, Math.round(now - t.last_success));
    const failing = t.last_error && (t.last_success == null || t.last_error.timestamp > t.last_success);
    const dropped = t.samples_dropped.rejected + t.samples_dropped.queue_full;
    let text = `${t.name}: `;
    text += failing ? `failing (${t.last_error.message.slice(0, 120)})` : (ago == null ? 'starting' : `sent ${ago} s ago`);
    if (t.queue_samples > 0) text += `, ${t.queue_samples} samples queued`;
    if (dropped > 0) text += `, ${dropped} dropped`;
    return { text, failing };
  });
  element.textContent = `export: ${lines.map((l) => l.text).join('; ')}`;
  element.className = lines.some((l) => l.failing) ? 'state reconnecting' : '';
  element.dataset.failing = String(lines.some((l) => l.failing));
}

// ---- WebSocket with reconnect ---------------------------------------------------
let retryDelay = 1000;
function setConnection(name, text) {
  const element = $('#connection');
  element.className = `state ${name}`;
  element.dataset.state = name;
  element.textContent = text;
}

function connect() {
  const socket = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  socket.onopen = () => {
    retryDelay = 1000;
    setConnection('live', 'live');
    loadRows('container');
    loadRows('vm');
    loadAlerts();
  };
  socket.onmessage = (event) => {
    const m = JSON.parse(event.data);
    switch (m.type) {
      case 'NodeMetrics': onNodeMetrics(m); break;
      case 'VmMetrics': onVmMetrics(m); break;
      case 'VmStatusChanged': onStatusChanged(m); break;
      case 'AlertTriggered': case 'AlertResolved': onAlert(m); break;
      case 'OomKill': if (m.target && state.selected?.id === m.target.id) refreshDetail(); break;
      default: break;
    }
  };
  socket.onclose = () => {
    setConnection('reconnecting', `reconnecting in ${Math.round(retryDelay / 1000)} s`);
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 15000);
  };
}

// ---- wiring -------------------------------------------------------------------
$('#search').addEventListener('input', (event) => { state.filter = event.target.value; renderTables(); });
document.querySelectorAll('#containers th, #vms th').forEach((th) => th.addEventListener('click', () => {
  const key = th.dataset.key;
  state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : (key === 'name' ? 1 : -1) };
  renderTables();
}));
for (const table of ['#containers', '#vms']) {
  $(`${table} tbody`).addEventListener('click', (event) => {
    const row = event.target.closest('tr[data-id]');
    if (row) openDetail(row.dataset.id, row.dataset.kind);
  });
}
$('#detail-close').addEventListener('click', closeDetail);
window.addEventListener('resize', drawCharts);
setInterval(refreshDetail, 5000);
setInterval(loadExport, 5000);
loadExport();
seedNodeHistory();
connect();
