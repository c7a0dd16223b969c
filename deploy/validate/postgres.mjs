// A throwaway PostgreSQL cluster for validate.mjs: initdb and pg_ctl in a
// fresh directory under the system temp dir (as the postgres user when this
// runs as root: initdb refuses root), listening on 127.0.0.1 at a free port,
// trust authentication, removed on stop(). The same approach as the C++
// tests' tests/pg_test_util.h; Debian's postgresql-15 (scripts/install-deps.sh)
// provides the binaries.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

function pgBin(name) {
  for (const dir of ["/usr/lib/postgresql/15/bin", ...(process.env.PATH ?? "").split(":")]) {
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Returns {url (postgresql://postgres@127.0.0.1:PORT/postgres), psql(sql, db),
// version, stop()}; throws with the reason when PostgreSQL is missing or
// does not start.
export async function startPostgres() {
  const initdb = pgBin("initdb");
  const pgCtl = pgBin("pg_ctl");
  const psqlBin = pgBin("psql");
  if (!initdb || !pgCtl || !psqlBin) {
    throw new Error("PostgreSQL 15 (initdb, pg_ctl, psql) not found: run scripts/install-deps.sh");
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "compressd-deploy-pg-"));
  const asUser = [];
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    fs.chownSync(dir, uid, gid);
    asUser.push("runuser", "-u", "postgres", "--");
  }
  const run = (argv) => {
    const [cmd, ...args] = [...asUser, ...argv];
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], cwd: dir });
  };
  const data = path.join(dir, "data");
  const port = await freePort();
  try {
    run([initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    run([pgCtl, "-D", data, "-l", path.join(dir, "server.log"), "-w", "-t", "60", "-o",
         `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off`, "start"]);
  } catch (e) {
    let log = "";
    try {
      log = fs.readFileSync(path.join(dir, "server.log"), "utf8");
    } catch {
      // no log yet
    }
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`PostgreSQL did not start: ${e.stderr || e.message}${log}`);
  }
  const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  const psql = (sql, db = "postgres") => execFileSync(psqlBin,
    ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", `postgresql://postgres@127.0.0.1:${port}/${db}`, "-f", "-"],
    { encoding: "utf8", input: sql, stdio: ["pipe", "pipe", "pipe"] });
  const version = psql("SHOW server_version;").trim();
  return {
    url,
    port,
    version,
    psql,
    stop() {
      try {
        run([pgCtl, "-D", data, "-m", "immediate", "-w", "stop"]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
