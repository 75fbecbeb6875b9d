"""The DBOS peer (scripts/peers.sh dbos): the project's register_user saga as a DBOS workflow, and
its load driver in the same process (DBOS is a library: the application starts workflows itself).

The saga: create the user in the user service's database, then its author replica in the post
service's database; when the post service refuses (the pen name is taken: a unique index, as in
the project's post-service), delete the user again. DBOS keeps the workflow's state in its system
database on the same PostgreSQL.

Two ways to write the steps (--style):
- step (default): plain @DBOS.step functions with connection pools of their own; the inserts are
  idempotent on the saga's id (ON CONFLICT (id) DO NOTHING), as in the Restate peer: DBOS records
  each step's outcome in its system database after the step, a replay re-runs it harmlessly.
- transaction: each step is a transaction of a DBOS SQLAlchemy datasource, one per
  database; DBOS records the step's outcome in that database in the same transaction (exactly once,
  as the project's participants do with their inbox). The domain's insert runs in a savepoint, so a
  refusal is an outcome, not an error, as in the project's participants. Costs about twice the
  CPU of the step style here.

The driver offers sagas at a fixed rate for a duration (open loop: DBOS.start_workflow from a pool
of starter threads, so a slow start never delays the next one), then prints the figures
bench/src/bin/loadgen.rs prints for the project. Latency is start -> terminal from each workflow's
own status row (created_at -> updated_at), as loadgen measures from the saga rows; CPU is utime +
stime from /proc of this process (DBOS and the driver together) and of every PostgreSQL process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import sys
import threading
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dbos import DBOS, DBOSConfig, SetWorkflowID, SQLAlchemyDatasource

PG = "postgresql://postgres@127.0.0.1:5432"
p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--rate", type=float, default=500.0)
p.add_argument("--duration", type=float, default=30.0)
p.add_argument("--drain-secs", type=float, default=120.0)
p.add_argument("--users-db", default=f"{PG}/peer_dbos_users")
p.add_argument("--posts-db", default=f"{PG}/peer_dbos_posts")
p.add_argument("--sys-db", default=f"{PG}/peer_dbos_sys")
p.add_argument("--compensate-every", type=int, default=10)
p.add_argument("--style", choices=["step", "transaction"], default="step")
p.add_argument("--pool", type=int, default=10, help="connections per participant database")
p.add_argument("--starters", type=int, default=16, help="threads that start workflows")
p.add_argument("--threads", type=int, default=64,
               help="DBOS's max_executor_threads (unbounded by default: under overload every queued "
                    "workflow would get a thread and wait for the system database's 20 connections)")
p.add_argument("--warmup", type=int, default=20)
p.add_argument("--label", default="DBOS")
args = p.parse_args()

POST_QUOTA = 100_000_000  # as scripts/bench.sh sets for the project's user service

config: DBOSConfig = {
    "name": "peer-dbos",
    "system_database_url": args.sys_db,
    "run_admin_server": False,
    "log_level": "WARNING",
    "max_executor_threads": args.threads,
}
DBOS(config=config)

engine_kwargs = {"pool_size": args.pool, "max_overflow": 0}
INSERT_USER = sa.text(
    "INSERT INTO users (id, email, name, post_quota) VALUES (:id, :email, :name, :quota)"
)
INSERT_AUTHOR = sa.text("INSERT INTO authors (id, name) VALUES (:id, :name)")
DELETE_USER = sa.text("DELETE FROM users WHERE id = :id")


def refused_by(e: IntegrityError, constraint: str) -> bool:
    diag = getattr(getattr(e, "orig", None), "diag", None)
    return getattr(diag, "constraint_name", None) == constraint


if args.style == "transaction":
    users_ds = SQLAlchemyDatasource.create(args.users_db, engine_kwargs=dict(engine_kwargs))
    posts_ds = SQLAlchemyDatasource.create(args.posts_db, engine_kwargs=dict(engine_kwargs))

    def insert_or_refuse(ds: SQLAlchemyDatasource, stmt: sa.TextClause, params: dict, constraint: str, why: str) -> str | None:
        session = ds.sql_session()
        try:
            with session.begin_nested():
                session.execute(stmt, params)
        except IntegrityError as e:
            if refused_by(e, constraint):
                return why
            raise
        return None

    @users_ds.transaction(isolation_level="READ COMMITTED")
    def create_user(user_id: str, email: str, name: str) -> str | None:
        return insert_or_refuse(
            users_ds, INSERT_USER,
            {"id": user_id, "email": email, "name": name.strip(), "quota": POST_QUOTA},
            "users_email", f"e-mail {email} is already registered",
        )

    @posts_ds.transaction(isolation_level="READ COMMITTED")
    def create_author(user_id: str, name: str) -> str | None:
        return insert_or_refuse(
            posts_ds, INSERT_AUTHOR, {"id": user_id, "name": name.strip()},
            "authors_name", f"pen name `{name.strip()}` is already taken by another author",
        )

    @users_ds.transaction(isolation_level="READ COMMITTED")
    def delete_user(user_id: str) -> None:
        users_ds.sql_session().execute(DELETE_USER, {"id": user_id})

else:
    users_engine = sa.create_engine(args.users_db.replace("postgresql://", "postgresql+psycopg://"), **engine_kwargs)
    posts_engine = sa.create_engine(args.posts_db.replace("postgresql://", "postgresql+psycopg://"), **engine_kwargs)
    ON_ID = " ON CONFLICT (id) DO NOTHING"

    @DBOS.step()
    def create_user(user_id: str, email: str, name: str) -> str | None:
        try:
            with users_engine.begin() as c:
                c.execute(sa.text(INSERT_USER.text + ON_ID),
                          {"id": user_id, "email": email, "name": name.strip(), "quota": POST_QUOTA})
        except IntegrityError as e:
            if refused_by(e, "users_email"):
                return f"e-mail {email} is already registered"
            raise
        return None

    @DBOS.step()
    def create_author(user_id: str, name: str) -> str | None:
        try:
            with posts_engine.begin() as c:
                c.execute(sa.text(INSERT_AUTHOR.text + ON_ID), {"id": user_id, "name": name.strip()})
        except IntegrityError as e:
            if refused_by(e, "authors_name"):
                return f"pen name `{name.strip()}` is already taken by another author"
            raise
        return None

    @DBOS.step()
    def delete_user(user_id: str) -> None:
        with users_engine.begin() as c:
            c.execute(DELETE_USER, {"id": user_id})


# Outcomes by workflow (= user) id, for the summary and the audit; the terminal state itself is
# read from DBOS's status rows.
outcomes: dict[str, str] = {}


@DBOS.workflow()
def register_user(email: str, name: str) -> str:
    user_id = DBOS.workflow_id
    assert user_id is not None
    if create_user(user_id, email, name) is not None:
        outcomes[user_id] = "failed"
        return "failed"
    if create_author(user_id, name) is not None:
        delete_user(user_id)
        outcomes[user_id] = "compensated"
        return "compensated"
    outcomes[user_id] = "completed"
    return "completed"


# ---- /proc sampling, as loadgen does it ----
CLK_TCK = os.sysconf("SC_CLK_TCK")


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def stat_of(pid: int | str) -> tuple[int, int]:
    """(utime + stime, starttime) in ticks."""
    stat = read(f"/proc/{pid}/stat")
    rest = stat[stat.rfind(")") + 1:].split()
    try:
        return int(rest[14 - 3]) + int(rest[15 - 3]), int(rest[22 - 3])
    except (IndexError, ValueError):
        return 0, 0


def kb_of(pid: int | str, file: str, key: str) -> int:
    for line in read(f"/proc/{pid}/{file}").splitlines():
        if line.startswith(key):
            return int(line[len(key):].split()[0])
    return 0


def postgres_pids() -> list[str]:
    return [d for d in os.listdir("/proc") if d.isdigit() and read(f"/proc/{d}/comm").strip() == "postgres"]


RUN_DBS = [u.rsplit("/", 1)[1] for u in (args.users_db, args.posts_db, args.sys_db)]
CLIENT = re.compile(r" (\d+\.\d+\.\d+\.\d+|\[local\]|[0-9a-f:]+)\(\d+\)| \[local\]")


def pg_class(pid: str) -> str:
    """A backend of this run's databases ("run"), of another database (another client of the same
    server: "others"), or one of the server's own processes ("shared": postmaster, WAL writer,
    checkpointer, autovacuum, ...), by its process title."""
    title = read(f"/proc/{pid}/cmdline").replace("\0", " ").rstrip()
    if any(f" {db} " in title + " " for db in RUN_DBS):
        return "run"
    return "others" if CLIENT.search(title) else "shared"


def sample() -> dict[str, dict[str, tuple[int, str]]]:
    """Ticks by process (pid/starttime): PostgreSQL's one by one, so that one that exits between two
    samples (an autovacuum worker, another client's backend) does not make the difference negative."""
    pg = {}
    for d in postgres_pids():
        ticks, start = stat_of(d)
        pg[f"{d}/{start}"] = (ticks, pg_class(d))
    return {"dbos-app": {"self": (stat_of(os.getpid())[0], "app")}, "postgres": pg}


def delta(after: dict[str, tuple[int, str]], before: dict[str, tuple[int, str]], cls: str | None = None) -> int:
    return sum(t - before.get(k, (0, c))[0] for k, (t, c) in after.items() if cls is None or c == cls)


def percentile(xs: list[float], q: float) -> float:
    return xs[round((len(xs) - 1) * q)] if xs else float("nan")


def main() -> int:
    DBOS.launch()
    run = uuid.uuid4().hex[20:]
    taken = f"Taken {run}"
    every = args.compensate_every
    pg_users = sa.create_engine(args.users_db.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.NullPool)
    pg_posts = sa.create_engine(args.posts_db.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.NullPool)
    pg_sys = sa.create_engine(args.sys_db.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.NullPool)
    with pg_posts.begin() as c:  # the author whose pen name every refused saga asks for
        c.execute(INSERT_AUTHOR, {"id": str(uuid.uuid4()), "name": taken})

    def registration(n: int) -> tuple[str, str]:
        refused = every > 0 and n % every == every - 1
        return f"load.{run}.{n}@example.com", (taken if refused else f"Load {run} {n}")

    n_of: dict[str, int] = {}  # workflow id -> saga number, for the audit

    def start(n: int) -> str:
        wid = str(uuid.uuid4())
        n_of[wid] = n
        with SetWorkflowID(wid):
            DBOS.start_workflow(register_user, *registration(n))
        return wid

    # Warm-up, as scripts/bench.sh does.
    warm = []
    for i in range(args.warmup):
        wid = str(uuid.uuid4())
        n_of[wid] = 1_000_000_000 + i
        with SetWorkflowID(wid):
            warm.append(DBOS.start_workflow(register_user, *registration(1_000_000_000 + i)))
    for h in warm:
        h.get_result()
    warm_ids = [h.get_workflow_id() for h in warm]

    starters = concurrent.futures.ThreadPoolExecutor(max_workers=args.starters, thread_name_prefix="starter")
    before = sample()
    t0 = time.monotonic()
    futures: list[concurrent.futures.Future[str]] = []
    n = 0
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= args.duration:
            break
        due = int(elapsed * args.rate) + 1  # a burst if the loop fell behind, as loadgen's interval
        while n < due:
            futures.append(starters.submit(start, n))
            n += 1
        time.sleep(max(0.0, n / args.rate - (time.monotonic() - t0)))
    load_time = time.monotonic() - t0
    ids: list[str] = []
    errors = 0
    first_error = None
    for f in futures:
        try:
            ids.append(f.result())
        except Exception as e:  # noqa: BLE001 - counted like loadgen's StartSaga errors
            errors += 1
            first_error = first_error or e
    starters.shutdown()
    if first_error is not None:
        print(f"start_workflow failed: {first_error}", file=sys.stderr)

    # Drain: every started saga must end.
    deadline = time.monotonic() + args.drain_secs
    terminal = 0
    q_count = sa.text(
        "SELECT count(*) FROM dbos.workflow_status WHERE workflow_uuid = ANY(:ids) AND status IN ('SUCCESS', 'ERROR')"
    )
    with pg_sys.connect() as c:
        while time.monotonic() < deadline:
            terminal = c.execute(q_count, {"ids": ids}).scalar_one()
            if terminal == len(ids):
                break
            time.sleep(0.1)
    finished = time.monotonic() - t0
    after = sample()

    with pg_sys.connect() as c:
        rows = c.execute(
            sa.text(
                "SELECT workflow_uuid, status, updated_at - created_at, created_at, updated_at FROM dbos.workflow_status "
                "WHERE workflow_uuid = ANY(:ids) AND status IN ('SUCCESS', 'ERROR')"
            ),
            {"ids": ids},
        ).all()
    by_state: dict[str, int] = {}
    for r in rows:
        state = outcomes.get(r[0], "unknown") if r[1] == "SUCCESS" else "error"
        by_state[state] = by_state.get(state, 0) + 1
    lat = sorted(float(r[2]) for r in rows)
    span = (max(r[4] for r in rows) - min(r[3] for r in rows)) / 1000 if rows else float("nan")

    what = f"(every {every}th refused at create_author and compensated)" if every > 0 else "(none refused)"
    print(f"== load: open loop, {args.rate:g} sagas/s offered for {args.duration:g} s; register_user {what} on {args.label}")
    print(
        f"started {len(ids)} in {load_time:.1f} s ({len(ids) / load_time:.1f}/s), start errors {errors}; "
        f"terminal {terminal} of {len(ids)} ("
        + ", ".join(f"{c} {s}" for s, c in sorted(by_state.items()))
        + f") {finished:.1f} s after the first start"
    )
    print(f"achieved throughput: {len(rows) / span:.1f} sagas/s (terminal sagas over first start → last end: {span:.1f} s)")
    print(
        f"latency start→terminal ms: p50 {percentile(lat, 0.5):.1f}  p90 {percentile(lat, 0.9):.1f}  "
        f"p99 {percentile(lat, 0.99):.1f}  max {lat[-1] if lat else float('nan'):.1f}"
    )
    per1000 = max(len(rows), 1) / 1000
    cpu = {k: delta(after[k], before[k]) / CLK_TCK / per1000 for k in after}
    print(
        f"CPU seconds per 1,000 sagas: dbos-app {cpu['dbos-app']:.2f}  postgres {cpu['postgres']:.2f}; "
        f"driver (in dbos-app); total {cpu['dbos-app'] + cpu['postgres']:.2f}"
    )
    def pg_part(cls: str) -> float:
        return delta(after["postgres"], before["postgres"], cls) / CLK_TCK / per1000

    others = delta(after["postgres"], before["postgres"], "others") / CLK_TCK
    print(
        f"postgres CPU split (s per 1,000 sagas): this run's backends {pg_part('run'):.2f}  server processes "
        f"{pg_part('shared'):.2f}  other databases' backends {pg_part('others'):.2f} ({others:.1f} CPU-s in all: "
        "someone else's load, counted in the total as loadgen counts it)"
    )
    pss = sum(kb_of(d, "smaps_rollup", "Pss:") for d in postgres_pids())
    print(f"memory MiB: dbos-app peak RSS {kb_of('self', 'status', 'VmHWM:') / 1024:.0f}; postgres PSS {pss / 1024:.0f}")

    # Audit: the users that exist are exactly the authors that exist, and exactly the completed
    # sagas' users (warm-up included); no compensated saga left a user or an author behind.
    with pg_users.connect() as c:
        users = {str(r[0]) for r in c.execute(sa.text("SELECT id FROM users"))}
    with pg_posts.connect() as c:
        authors = {str(r[0]) for r in c.execute(sa.text("SELECT id FROM authors WHERE name <> :t"), {"t": taken})}
    completed = {i for i in ids + warm_ids if outcomes.get(i) == "completed"}
    compensated = {i for i in ids + warm_ids if outcomes.get(i) == "compensated"}
    def refused_n(n: int) -> bool:
        return every > 0 and n % every == every - 1

    everyone = ids + warm_ids
    wrong = sum(1 for i in everyone if (outcomes.get(i) == "compensated") != refused_n(n_of[i]))
    users_no_author, authors_no_user = len(users - authors), len(authors - users)
    leftovers = len(compensated & (users | authors))
    print(
        f"audit (warm-up included): {len(completed)} completed, {len(compensated)} compensated "
        f"({sum(1 for i in everyone if refused_n(n_of[i]))} had the taken pen name); users {len(users)}, authors "
        f"{len(authors)} (besides the one holding the taken name); users without an author {users_no_author}, "
        f"authors without a user {authors_no_user}, compensated sagas' rows left {leftovers}, unexpected outcomes {wrong}"
    )
    problems = []
    if wrong:
        problems.append(f"{wrong} sagas compensated that should not be, or the reverse")
    if users != completed:
        problems.append(f"{len(users)} users for {len(completed)} completed sagas ({len(users ^ completed)} differ)")
    if authors != completed:
        problems.append(f"{len(authors)} authors for {len(completed)} completed sagas ({len(authors ^ completed)} differ)")
    if compensated & (users | authors):
        problems.append(f"{len(compensated & (users | authors))} compensated sagas left rows behind")
    all_terminal = terminal == len(ids) and len(ids) > 0 and by_state.get("error", 0) == 0
    print(
        f"correctness: every saga terminal: {'yes' if all_terminal else 'NO'}; databases consistent: "
        + ("yes" if not problems else f"NO ({'; '.join(problems)})")
    )
    sys.stdout.flush()
    return 0 if all_terminal and not problems else 1


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    finally:
        # DBOS.destroy waits for its threads; a bounded exit either way.
        threading.Timer(10.0, lambda: os._exit(code)).start()
        try:
            DBOS.destroy(destroy_registry=True)
        except Exception:  # noqa: BLE001
            pass
        os._exit(code)
