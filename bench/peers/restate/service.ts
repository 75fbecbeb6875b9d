// The project's register_user saga as a Restate service (TypeScript SDK): create the user in the
// user service's database, then its author replica in the post service's database; when the post
// service refuses (the pen name is taken: a unique index, as in the project's post-service), the
// user is deleted again. Each step is a `ctx.run`, journaled by restate-server; the steps are
// idempotent on the saga's generated user id, so a replayed step changes nothing.
//
// Run by scripts/peers.sh with Node >= 22 (which strips the types itself):
//   USERS_DB=postgres://… POSTS_DB=postgres://… PORT=29080 node service.ts

import * as http2 from "node:http2";
import * as restate from "@restatedev/restate-sdk";
import pg from "pg";

const poolSize = Number(process.env.DB_POOL ?? "10");
const users = new pg.Pool({ connectionString: process.env.USERS_DB, max: poolSize });
const posts = new pg.Pool({ connectionString: process.env.POSTS_DB, max: poolSize });
// As in the benchmark of the project (scripts/bench.sh sets APP_RULES__DEFAULT_POST_QUOTA).
const POST_QUOTA = 100_000_000;
const UNIQUE_VIOLATION = "23505";

type Registration = { email: string; name: string };
type Outcome = { state: "completed" | "compensated"; user_id: string; reason?: string };

function refusedBy(e: unknown, constraint: string): boolean {
  const err = e as { code?: string; constraint?: string };
  return err?.code === UNIQUE_VIOLATION && err?.constraint === constraint;
}

// Named queries: node-postgres prepares each once per connection, as sqlx does in the services.
async function createUser(id: string, email: string, name: string): Promise<void> {
  try {
    await users.query({
      name: "create_user",
      text: "INSERT INTO users (id, email, name, post_quota) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
      values: [id, email, name.trim(), POST_QUOTA],
    });
  } catch (e) {
    if (refusedBy(e, "users_email")) {
      throw new restate.TerminalError(`e-mail ${email} is already registered`);
    }
    throw e;
  }
}

async function deleteUser(id: string): Promise<void> {
  await users.query({ name: "delete_user", text: "DELETE FROM users WHERE id = $1", values: [id] });
}

async function createAuthor(id: string, name: string): Promise<void> {
  try {
    await posts.query({
      name: "create_author",
      text: "INSERT INTO authors (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
      values: [id, name.trim()],
    });
  } catch (e) {
    if (refusedBy(e, "authors_name")) {
      throw new restate.TerminalError(`pen name \`${name.trim()}\` is already taken by another author`);
    }
    throw e;
  }
}

async function deleteAuthor(id: string): Promise<void> {
  await posts.query({ name: "delete_author", text: "DELETE FROM authors WHERE id = $1", values: [id] });
}

const registerUser = restate.service({
  name: "RegisterUser",
  handlers: {
    run: async (ctx: restate.Context, req: Registration): Promise<Outcome> => {
      const userId = ctx.rand.uuidv4();
      // Compensations of the steps that took effect, undone in reverse order (a refused step
      // wrote nothing, as in the project's orchestrator).
      const undo: Array<() => Promise<void>> = [];
      try {
        await ctx.run("create_user", () => createUser(userId, req.email, req.name));
        undo.push(() => ctx.run("delete_user", () => deleteUser(userId)));
        await ctx.run("create_author", () => createAuthor(userId, req.name));
        undo.push(() => ctx.run("delete_author", () => deleteAuthor(userId)));
        return { state: "completed", user_id: userId };
      } catch (e) {
        if (!(e instanceof restate.TerminalError)) {
          throw e; // not a business refusal: Restate retries the invocation
        }
        for (const step of undo.reverse()) {
          await step();
        }
        return { state: "compensated", user_id: userId, reason: e.message };
      }
    },
  },
});

const port = Number(process.env.PORT ?? "29080");
const server = http2.createServer(restate.createEndpointHandler({ services: [registerUser] }));
server.listen(port, "127.0.0.1", () => console.log(`RegisterUser endpoint on 127.0.0.1:${port}`));
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    server.close();
    void Promise.allSettled([users.end(), posts.end()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
