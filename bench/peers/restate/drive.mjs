// The load driver for the Restate peer (scripts/peers.sh restate): offers register_user sagas at a
// fixed rate through Restate's HTTP ingress (open loop: a late response never delays the next
// start), and prints the figures bench/src/bin/loadgen.rs prints for the project — achieved
// sagas/s, start→terminal latency percentiles, CPU seconds per 1,000 sagas of every process
// involved (from /proc, as loadgen: utime + stime of restate-server, the service, every
// PostgreSQL process and this driver), peak memory, and correctness (every saga terminal, the two
// databases agree).
//
// Latency start→terminal is read from restate-server's own records (sys_invocation: created_at →
// completed_at), as loadgen reads the saga rows' created_at → updated_at; the client's request →
// response time (the ingress call returns when the saga is terminal) is printed beside it.
//
//   node drive.mjs --rate 200 --duration 30 --proc restate-server=PID --proc service=PID

import * as http from "node:http";
import * as fs from "node:fs";
import { execFileSync } from "node:child_process";
import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";
import pg from "pg";

const { values: opt } = parseArgs({
  options: {
    rate: { type: "string", default: "500" },
    duration: { type: "string", default: "30" },
    "drain-secs": { type: "string", default: "120" },
    ingress: { type: "string", default: "http://127.0.0.1:28080" },
    admin: { type: "string", default: "http://127.0.0.1:29070" },
    "users-db": { type: "string", default: "postgres://postgres@127.0.0.1:5432/peer_restate_users" },
    "posts-db": { type: "string", default: "postgres://postgres@127.0.0.1:5432/peer_restate_posts" },
    proc: { type: "string", multiple: true, default: [] },
    "compensate-every": { type: "string", default: "10" },
    warmup: { type: "string", default: "20" },
    label: { type: "string", default: "Restate" },
  },
});
const rate = Number(opt.rate);
const duration = Number(opt.duration);
const drainSecs = Number(opt["drain-secs"]);
const every = Number(opt["compensate-every"]);
const ingress = new URL(opt.ingress);
const procs = opt.proc.map((p) => {
  const [label, pid] = p.split("=");
  return { label, pid: Number(pid) };
});

// ---- /proc sampling, as loadgen does it ----
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

function read(path) {
  try {
    return fs.readFileSync(path, "utf8");
  } catch {
    return "";
  }
}
function statOf(pid) {
  const stat = read(`/proc/${pid}/stat`);
  const rest = stat.slice(stat.lastIndexOf(")") + 1).trim().split(/\s+/);
  // After "(comm)": state is field 3; utime 14, stime 15, starttime 22 (1-based, proc(5)).
  const field = (i) => Number(rest[i - 3]) || 0;
  return { ticks: field(14) + field(15), start: field(22) };
}
function ticksOf(pid) {
  return statOf(pid).ticks;
}
function kbOf(pid, file, key) {
  const line = read(`/proc/${pid}/${file}`).split("\n").find((l) => l.startsWith(key));
  return line ? Number(line.slice(key.length).trim().split(/\s+/)[0]) || 0 : 0;
}
function postgresPids() {
  return fs
    .readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d) && read(`/proc/${d}/comm`).trim() === "postgres")
    .map(Number);
}
// PostgreSQL's processes one by one (pid and start time), so that one that exits between two
// samples (an autovacuum worker, another client's backend) does not make the difference negative:
// what it used in between is lost, what every other used is counted. Each is classed by its
// process title: a backend of this run's databases ("run"), a backend of another database
// (another client of the same server: "others"), or the server's own processes ("shared":
// postmaster, WAL writer, checkpointer, autovacuum, ...). The total counts all three, as loadgen
// does (machine-wide); the split shows how much of it was someone else's.
const runDbs = [opt["users-db"], opt["posts-db"]].map((u) => new URL(u).pathname.slice(1));
function pgClass(pid) {
  const title = read(`/proc/${pid}/cmdline`).replaceAll("\0", " ");
  if (runDbs.some((db) => title.includes(` ${db} `) || title.trimEnd().endsWith(` ${db}`))) return "run";
  if (/ (\d+\.\d+\.\d+\.\d+|\[local\]|[0-9a-f:]+)\(\d+\)/.test(title) || / \[local\]/.test(title)) return "others";
  return "shared";
}
function postgresTicks() {
  const m = new Map();
  for (const pid of postgresPids()) {
    const { ticks, start } = statOf(pid);
    m.set(`${pid}/${start}`, { ticks, cls: pgClass(pid) });
  }
  return m;
}
function sample() {
  const s = {};
  for (const { label, pid } of procs) s[label] = ticksOf(pid);
  s.postgres = postgresTicks();
  s.driver = ticksOf(process.pid);
  return s;
}
function delta(after, before, label, cls) {
  if (label !== "postgres") return after[label] - before[label];
  let d = 0;
  for (const [k, v] of after.postgres) {
    if (cls && v.cls !== cls) continue;
    d += v.ticks - (before.postgres.get(k)?.ticks ?? 0);
  }
  return d;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.round((sorted.length - 1) * p)];
}

// ---- the workload ----
const run = randomUUID().replaceAll("-", "").slice(20);
const takenName = `Taken ${run}`;
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

function registration(n) {
  const refused = every > 0 && n % every === every - 1;
  return {
    email: `load.${run}.${n}@example.com`,
    name: refused ? takenName : `Load ${run} ${n}`,
  };
}

// One saga: resolves with { ok, state, userId, start, end } (times in ms, performance.now()).
function startSaga(n) {
  const body = JSON.stringify(registration(n));
  const start = performance.now();
  return new Promise((resolve) => {
    const req = http.request(
      {
        agent,
        host: ingress.hostname,
        port: ingress.port,
        path: "/RegisterUser/run",
        method: "POST",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const end = performance.now();
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode !== 200) {
            resolve({ ok: false, error: `HTTP ${res.statusCode}: ${text.slice(0, 200)}`, start, end });
            return;
          }
          const out = JSON.parse(text);
          resolve({ ok: true, state: out.state, userId: out.user_id, start, end });
        });
        res.on("error", (e) => resolve({ ok: false, error: String(e), start, end: performance.now() }));
      },
    );
    req.on("error", (e) => resolve({ ok: false, error: String(e), start, end: performance.now() }));
    req.end(body);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const usersDb = new pg.Client({ connectionString: opt["users-db"] });
  const postsDb = new pg.Client({ connectionString: opt["posts-db"] });
  await usersDb.connect();
  await postsDb.connect();
  // The author whose pen name every refused saga asks for.
  await postsDb.query("INSERT INTO authors (id, name) VALUES ($1, $2)", [randomUUID(), takenName]);

  // Warm-up, as scripts/bench.sh does: sagas through the whole pipeline before measuring. The
  // first is retried until the ingress knows the newly registered service.
  const warmStart = performance.now();
  const warm = [];
  for (;;) {
    const first = await startSaga(999_999_999);
    if (first.ok) {
      warm.push(Promise.resolve(first));
      break;
    }
    if (performance.now() - warmStart > 30_000) {
      console.error(`the first saga failed for 30 s: ${first.error}`);
      process.exit(1);
    }
    await sleep(200);
  }
  for (let i = 0; i < Number(opt.warmup); i++) warm.push(startSaga(1_000_000_000 + i));
  const warmResults = await Promise.all(warm);
  const warmFailed = warmResults.filter((r) => !r.ok);
  if (warmFailed.length > 0) {
    console.error(`warm-up failed: ${warmFailed[0].error}`);
    process.exit(1);
  }

  // A second's pause, so that the warm-up's invocations are created well before the measured ones
  // (which are told apart in sys_invocation by created_at >= t0 - 500 ms: its clock may lag ours by
  // a millisecond or so).
  await sleep(1000);
  const before = sample();
  const t0 = performance.now();
  const t0Wall = Date.now();
  const durMs = duration * 1000;
  const pending = [];
  let n = 0;
  for (;;) {
    const elapsed = performance.now() - t0;
    if (elapsed >= durMs) break;
    // Every start that is due (a burst if the loop fell behind, as loadgen's interval does).
    const due = Math.floor((elapsed * rate) / 1000) + 1;
    while (n < due) pending.push(startSaga(n++));
    await sleep(Math.max(0, (n * 1000) / rate - (performance.now() - t0)));
  }
  const loadTime = (performance.now() - t0) / 1000;

  // Drain: every started saga must end.
  const results = new Array(pending.length);
  let done = 0;
  pending.forEach((p, i) =>
    p.then((r) => {
      results[i] = r;
      done++;
    }),
  );
  const deadline = performance.now() + drainSecs * 1000;
  while (done < pending.length && performance.now() < deadline) await sleep(50);
  const finished = (performance.now() - t0) / 1000;
  const after = sample();

  const ok = results.filter((r) => r?.ok);
  const errors = results.filter((r) => r && !r.ok);
  const byState = {};
  for (const r of ok) byState[r.state] = (byState[r.state] ?? 0) + 1;
  const clientLat = ok.map((r) => r.end - r.start).sort((a, b) => a - b);
  // Start→terminal as loadgen and the DBOS peer measure it, on the server's own records: each
  // invocation's created_at → completed_at in restate-server's sys_invocation (kept for a day
  // after completion by default), for the invocations created after the warm-up. Falls back to
  // the client's request → response times if the query fails.
  let lat = clientLat;
  let span;
  let latWhat = "the client's request → response (restate-server's query failed)";
  let server = null;
  try {
    const q = await fetch(new URL("/query", opt.admin), {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({
        query:
          "SELECT CAST(created_at AS BIGINT) AS c, CAST(completed_at AS BIGINT) AS e FROM sys_invocation " +
          `WHERE target_service_name = 'RegisterUser' AND status = 'completed' AND CAST(created_at AS BIGINT) >= ${t0Wall - 500}`,
      }),
    });
    if (!q.ok) throw new Error(`HTTP ${q.status}: ${(await q.text()).slice(0, 300)}`);
    server = (await q.json()).rows.map((r) => [Number(r.c), Number(r.e)]);
  } catch (e) {
    console.error(`restate-server's sys_invocation could not be read: ${e}`);
  }
  if (server && server.length === ok.length) {
    lat = server.map(([c, e]) => e - c).sort((a, b) => a - b);
    span = (Math.max(...server.map((r) => r[1])) - Math.min(...server.map((r) => r[0]))) / 1000;
    latWhat = "restate-server's sys_invocation created_at → completed_at, ms resolution";
  } else {
    if (server) console.error(`sys_invocation has ${server.length} completed invocations for ${ok.length} answered requests; using the client's times`);
    const firstStart = ok.reduce((m, r) => Math.min(m, r.start), Infinity);
    const lastEnd = ok.reduce((m, r) => Math.max(m, r.end), -Infinity);
    span = (lastEnd - firstStart) / 1000;
  }

  console.log(
    `== load: open loop, ${rate} sagas/s offered for ${duration} s; register_user ` +
      (every > 0 ? `(every ${every}th refused at create_author and compensated)` : "(none refused)") +
      ` on ${opt.label}`,
  );
  console.log(
    `started ${pending.length} in ${loadTime.toFixed(1)} s (${(pending.length / loadTime).toFixed(1)}/s), ` +
      `start errors ${errors.length}; terminal ${ok.length} of ${pending.length} (` +
      Object.entries(byState)
        .sort()
        .map(([s, c]) => `${c} ${s}`)
        .join(", ") +
      `) ${finished.toFixed(1)} s after the first start`,
  );
  for (const e of errors.slice(0, 3)) console.error(`saga failed: ${e.error}`);
  console.log(
    `achieved throughput: ${(ok.length / span).toFixed(1)} sagas/s ` +
      `(terminal sagas over first start → last end: ${span.toFixed(1)} s)`,
  );
  console.log(
    `latency start→terminal ms: p50 ${percentile(lat, 0.5).toFixed(1)}  p90 ${percentile(lat, 0.9).toFixed(1)}  ` +
      `p99 ${percentile(lat, 0.99).toFixed(1)}  max ${(lat.at(-1) ?? NaN).toFixed(1)}  (${latWhat})`,
  );
  console.log(
    `latency as the client saw it (HTTP request → response through the ingress) ms: p50 ${percentile(clientLat, 0.5).toFixed(1)}  ` +
      `p90 ${percentile(clientLat, 0.9).toFixed(1)}  p99 ${percentile(clientLat, 0.99).toFixed(1)}  max ${(clientLat.at(-1) ?? NaN).toFixed(1)}`,
  );
  const per1000 = Math.max(ok.length, 1) / 1000;
  const cpu = (label) => delta(after, before, label) / CLK_TCK / per1000;
  let total = 0;
  const parts = [];
  for (const label of [...procs.map((p) => p.label), "postgres"]) {
    total += cpu(label);
    parts.push(`${label} ${cpu(label).toFixed(2)}`);
  }
  total += cpu("driver");
  console.log(
    `CPU seconds per 1,000 sagas: ${parts.join("  ")}; driver ${cpu("driver").toFixed(2)}; total ${total.toFixed(2)}`,
  );
  const pgPart = (cls) => delta(after, before, "postgres", cls) / CLK_TCK / per1000;
  console.log(
    `postgres CPU split (s per 1,000 sagas): this run's backends ${pgPart("run").toFixed(2)}  ` +
      `server processes ${pgPart("shared").toFixed(2)}  other databases' backends ${pgPart("others").toFixed(2)} ` +
      `(${(delta(after, before, "postgres", "others") / CLK_TCK).toFixed(1)} CPU-s in all: someone else's load, counted in the total as loadgen counts it)`,
  );
  const pss = postgresPids().reduce((t, pid) => t + kbOf(pid, "smaps_rollup", "Pss:"), 0);
  console.log(
    "memory MiB: " +
      procs.map(({ label, pid }) => `${label} peak RSS ${(kbOf(pid, "status", "VmHWM:") / 1024).toFixed(0)}`).join("; ") +
      `; postgres PSS ${(pss / 1024).toFixed(0)}`,
  );

  // Audit: the users that exist are exactly the authors that exist, and exactly the completed
  // sagas' users (warm-up included); no compensated saga left a user or an author behind; the
  // sagas compensated are exactly the ones whose pen name was taken (every Nth).
  const warmNs = [999_999_999, ...Array.from({ length: Number(opt.warmup) }, (_, i) => 1_000_000_000 + i)];
  const all = [...warmResults.map((r, i) => ({ ...r, n: warmNs[i] })), ...results.map((r, n) => ({ ...r, n })).filter((r) => r.ok)];
  const refusedN = (n) => every > 0 && n % every === every - 1;
  const completed = new Set(all.filter((r) => r.state === "completed").map((r) => r.userId));
  const compensated = all.filter((r) => r.state === "compensated").map((r) => r.userId);
  const wrongOutcome = all.filter((r) => (r.state === "compensated") !== refusedN(r.n)).length;
  const userIds = new Set((await usersDb.query("SELECT id::text FROM users")).rows.map((r) => r.id));
  const authorIds = new Set(
    (await postsDb.query("SELECT id::text FROM authors WHERE name <> $1", [takenName])).rows.map((r) => r.id),
  );
  const usersNoAuthor = [...userIds].filter((id) => !authorIds.has(id)).length;
  const authorsNoUser = [...authorIds].filter((id) => !userIds.has(id)).length;
  const leftovers = compensated.filter((id) => userIds.has(id) || authorIds.has(id)).length;
  const problems = [];
  for (const id of completed) {
    if (!userIds.has(id)) problems.push(`completed saga's user ${id} is missing`);
    if (!authorIds.has(id)) problems.push(`completed saga's author ${id} is missing`);
  }
  if (leftovers > 0) problems.push(`${leftovers} compensated sagas left a user or an author behind`);
  if (usersNoAuthor > 0) problems.push(`${usersNoAuthor} users without an author`);
  if (authorsNoUser > 0) problems.push(`${authorsNoUser} authors without a user`);
  if (wrongOutcome > 0) problems.push(`${wrongOutcome} sagas compensated that should not be, or the reverse`);
  if (userIds.size !== completed.size) problems.push(`${userIds.size} users for ${completed.size} completed sagas`);
  if (authorIds.size !== completed.size) problems.push(`${authorIds.size} authors for ${completed.size} completed sagas`);
  console.log(
    `audit (warm-up included): ${completed.size} completed, ${compensated.length} compensated ` +
      `(${all.filter((r) => refusedN(r.n)).length} had the taken pen name); users ${userIds.size}, authors ${authorIds.size} ` +
      `(besides the one holding the taken name); users without an author ${usersNoAuthor}, authors without a user ${authorsNoUser}, ` +
      `compensated sagas' rows left ${leftovers}, unexpected outcomes ${wrongOutcome}`,
  );
  const allTerminal = ok.length === pending.length && pending.length > 0;
  console.log(
    `correctness: every saga terminal: ${allTerminal ? "yes" : "NO"}; databases consistent: ` +
      (problems.length === 0 ? "yes" : `NO (${problems.slice(0, 5).join("; ")})`),
  );
  await usersDb.end();
  await postsDb.end();
  agent.destroy();
  process.exit(allTerminal && problems.length === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
