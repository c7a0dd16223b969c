// Checks deploy/ without a cluster:
//  1. renders the base and every overlay (render.mjs), and where
//     `kubectl kustomize` exists, renders them with it too and requires the
//     same objects;
//  2. checks every object against the Kubernetes API schemas
//     (kubernetes-models) or prometheus-operator's (ServiceMonitor,
//     PrometheusRule); an object of any other kind fails;
//  3. checks the manifests against each other and against the real server:
//     ConfigMap keys are flags `compressd --help` lists, the addresses'
//     ports are the container ports, probes hit the health port, selectors
//     select the pod, mounts cover the configured paths, the grace period
//     outlasts the drain, alert and dashboard queries use metrics /metrics
//     serves; then it starts compressd with an overlay's ConfigMap (addresses
//     on 127.0.0.1:0, files in a temp dir, TLS certificates made with
//     openssl) and asks its plaintext health port with `compressctl health`.
//
// Usage: node validate.mjs [--compressd BIN --compressctl BIN]
// Prints one line per check and ends with "N passed, N failed".
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { render, resourceId } from "./render.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const deployDir = path.resolve(here, "..");
const TARGETS = ["base", "overlays/cpu", "overlays/gpu"];

const args = process.argv.slice(2);
const argValue = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const compressdBin = argValue("--compressd");
const compressctlBin = argValue("--compressctl");

let passed = 0;
let failed = 0;
function check(name, fn) {
  try {
    const note = fn();
    passed++;
    console.log(`PASS ${name}${note ? ` (${note})` : ""}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
async function checkAsync(name, fn) {
  try {
    const note = await fn();
    passed++;
    console.log(`PASS ${name}${note ? ` (${note})` : ""}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// --- 1. Rendering ------------------------------------------------------------

function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]));
  }
  return v;
}

function kubectlKustomize(dir) {
  try {
    const version = execFileSync("kubectl", ["version", "--client", "-o", "json"], {
      encoding: "utf8", stdio: ["ignore", "pipe", "ignore"],
    });
    const out = execFileSync("kubectl", ["kustomize", dir], {
      encoding: "utf8", stdio: ["ignore", "pipe", "pipe"],
    });
    const docs = YAML.parseAllDocuments(out).map((d) => d.toJS()).filter(Boolean);
    return { docs, version: JSON.parse(version).kustomizeVersion ?? "unknown" };
  } catch (e) {
    if (e.code === "ENOENT") return null;
    throw new Error(`kubectl kustomize ${dir}: ${e.stderr || e.message}`);
  }
}

const rendered = {};
for (const t of TARGETS) {
  check(`render ${t}`, () => {
    rendered[t] = render(path.join(deployDir, t));
    const ids = rendered[t].map(resourceId);
    assert(new Set(ids).size === ids.length, `duplicate objects: ${ids}`);
    return `${rendered[t].length} objects`;
  });
  check(`render ${t} agrees with kubectl kustomize`, () => {
    const k = kubectlKustomize(path.join(deployDir, t));
    if (k === null) return "kubectl not installed: skipped, own renderer only";
    const mine = new Map((rendered[t] ?? []).map((o) => [resourceId(o), JSON.stringify(canonical(o))]));
    const theirs = new Map(k.docs.map((o) => [resourceId(o), JSON.stringify(canonical(o))]));
    assert(mine.size === theirs.size, `object count ${mine.size} vs kustomize ${theirs.size}`);
    for (const [id, json] of theirs) {
      assert(mine.has(id), `kustomize renders ${id}, this renderer does not`);
      assert(mine.get(id) === json, `${id} differs:\n  mine:      ${mine.get(id)}\n  kustomize: ${json}`);
    }
    return `kustomize ${k.version}`;
  });
}

// --- 2. Schemas --------------------------------------------------------------

async function modelFor(obj) {
  const [group, version] = obj.apiVersion.includes("/")
    ? obj.apiVersion.split("/")
    : ["", obj.apiVersion];
  const modulePath = group === "monitoring.coreos.com"
    ? `@kubernetes-models/prometheus-operator/${group}/${version}/${obj.kind}`
    : group === ""
      ? `kubernetes-models/${version}/${obj.kind}`
      : `kubernetes-models/${group}/${version}/${obj.kind}`;
  let mod;
  try {
    mod = await import(modulePath);
  } catch {
    throw new Error(`no schema for ${obj.apiVersion} ${obj.kind}`);
  }
  return mod[obj.kind];
}

for (const t of TARGETS) {
  for (const obj of rendered[t] ?? []) {
    await checkAsync(`schema ${t} ${obj.kind}/${obj.metadata?.name}`, async () => {
      const Model = await modelFor(obj);
      new Model(obj).validate();
    });
  }
}

// --- 3. Consistency ----------------------------------------------------------

function serverFlags() {
  if (!compressdBin) return null;
  // Abseil prints the help and exits 1.
  let help;
  try {
    help = execFileSync(compressdBin, ["--help"], {
      encoding: "utf8", env: { ...process.env, OPENBLAS_CORETYPE: process.env.OPENBLAS_CORETYPE ?? "Haswell" },
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (e) {
    help = `${e.stdout ?? ""}${e.stderr ?? ""}`;
  }
  const flags = new Set();
  for (const m of help.matchAll(/^\s+--([a-z0-9_]+)\s/gm)) flags.add(m[1]);
  if (!flags.has("listen") || !flags.has("health_listen")) {
    throw new Error(`no server flags found in compressd --help:\n${help}`);
  }
  return flags;
}

const portOf = (address) => Number(address.slice(address.lastIndexOf(":") + 1));
function durationSeconds(s) {
  const units = { h: 3600, m: 60, s: 1, ms: 0.001 };
  let total = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)) total += Number(m[1]) * units[m[2]];
  return total;
}
function find(objs, kind, name) {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name}`);
  return o;
}
function selects(selector, labels) {
  return Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v) &&
         Object.keys(selector ?? {}).length > 0;
}

const flags = (() => {
  try {
    return serverFlags();
  } catch (e) {
    check("compressd --help", () => { throw e; });
    return null;
  }
})();

const METRICS_IN_SOURCE = (() => {
  const src = fs.readFileSync(path.join(deployDir, "..", "server/service/metrics.cc"), "utf8");
  return new Set([...src.matchAll(/\.Name\("([a-z_]+)"\)/g)].map((m) => m[1]));
})();

function metricNamesIn(expr) {
  return [...expr.matchAll(/\b(compressd_[a-z_]+)\b/g)].map((m) => m[1]);
}
function baseMetric(name) {
  return name.replace(/_(bucket|sum|count)$/, "");
}

for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`consistency ${t}`, () => {
    const sts = find(objs, "StatefulSet", "compressd");
    assert(sts.spec.replicas === 1, "replicas must be 1: one process owns the SQLite store");
    const pod = sts.spec.template;
    assert(selects(sts.spec.selector.matchLabels, pod.metadata.labels), "StatefulSet selector misses its pod");
    const c = pod.spec.containers.find((x) => x.name === "compressd");
    assert(c, "no container named compressd");
    const cmName = c.envFrom?.[0]?.configMapRef?.name;
    const cm = find(objs, "ConfigMap", cmName);
    const env = cm.data;

    if (flags) {
      for (const key of Object.keys(env)) {
        assert(key.startsWith("COMPRESSD_"), `${key}: not a COMPRESSD_ variable`);
        const flag = key.slice("COMPRESSD_".length).toLowerCase();
        assert(flags.has(flag), `${key}: compressd has no flag --${flag}`);
      }
    }
    const ports = Object.fromEntries(c.ports.map((p) => [p.name, p.containerPort]));
    assert(portOf(env.COMPRESSD_LISTEN) === ports.grpc, "COMPRESSD_LISTEN port != container port grpc");
    assert(portOf(env.COMPRESSD_HEALTH_LISTEN) === ports.health, "COMPRESSD_HEALTH_LISTEN port != container port health");
    assert(portOf(env.COMPRESSD_METRICS_LISTEN) === ports.metrics, "COMPRESSD_METRICS_LISTEN port != container port metrics");
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const p = c[probe];
      assert(p?.grpc, `${probe}: must be a native gRPC probe`);
      assert(p.grpc.port === ports.health, `${probe}: port ${p.grpc.port} is not the health port ${ports.health}`);
    }
    const grace = durationSeconds(env.COMPRESSD_DRAIN_GRACE ?? "30s");
    assert(pod.spec.terminationGracePeriodSeconds >= grace + 10,
           `terminationGracePeriodSeconds ${pod.spec.terminationGracePeriodSeconds} must exceed the drain grace ${grace}s by 10s`);

    // Mounts: every configured path lies under a mount of the right volume.
    const volumes = Object.fromEntries(pod.spec.volumes.map((v) => [v.name, v]));
    const mountOf = (file) => c.volumeMounts.find((m) => file === m.mountPath || file.startsWith(`${m.mountPath}/`));
    for (const key of ["COMPRESSD_DATA_DIR", "COMPRESSD_TLS_CERT", "COMPRESSD_TLS_KEY", "COMPRESSD_TOKEN_FILE",
                       "COMPRESSD_TLS_CLIENT_CA"]) {
      if (!env[key]) continue;
      const m = mountOf(env[key]);
      assert(m, `${key}=${env[key]} is not under any volume mount`);
      const v = volumes[m.name];
      assert(v, `mount ${m.name} has no volume`);
      if (v.secret) {
        const secret = find(objs, "Secret", v.secret.secretName);
        const fileKey = path.relative(m.mountPath, env[key]);
        const keys = Object.keys({ ...(secret.data ?? {}), ...(secret.stringData ?? {}) });
        assert(keys.includes(fileKey), `${key}: Secret ${secret.metadata.name} has no key ${fileKey}`);
      }
      if (v.persistentVolumeClaim) find(objs, "PersistentVolumeClaim", v.persistentVolumeClaim.claimName);
    }
    const dataMount = mountOf(env.COMPRESSD_DATA_DIR);
    assert(volumes[dataMount.name].persistentVolumeClaim, "the data directory must be on the PersistentVolumeClaim");

    // Services, monitor, budget and policy select what they should.
    const svc = find(objs, "Service", "compressd");
    assert(selects(svc.spec.selector, pod.metadata.labels), "Service compressd selects no pod");
    for (const sp of svc.spec.ports) {
      assert(sp.targetPort in ports, `Service port ${sp.name}: targetPort ${sp.targetPort} is no container port`);
    }
    assert(svc.spec.ports.some((p) => p.targetPort === "grpc"), "Service has no gRPC port");
    assert(svc.spec.ports.some((p) => p.targetPort === "metrics"), "Service has no metrics port");
    const headless = find(objs, "Service", sts.spec.serviceName);
    assert(headless.spec.clusterIP === "None", "the StatefulSet's serviceName must be headless");
    const sm = find(objs, "ServiceMonitor", "compressd");
    assert(selects(sm.spec.selector.matchLabels, svc.metadata.labels), "ServiceMonitor selects no Service");
    for (const e of sm.spec.endpoints) {
      assert(svc.spec.ports.some((p) => p.name === e.port && p.targetPort === "metrics"),
             `ServiceMonitor port ${e.port} is not the Service's metrics port`);
    }
    const pdb = find(objs, "PodDisruptionBudget", "compressd");
    assert(selects(pdb.spec.selector.matchLabels, pod.metadata.labels), "PodDisruptionBudget selects no pod");
    const np = find(objs, "NetworkPolicy", "compressd");
    assert(selects(np.spec.podSelector.matchLabels, pod.metadata.labels), "NetworkPolicy selects no pod");
    for (const rule of np.spec.ingress) {
      for (const p of rule.ports) assert(p.port in ports, `NetworkPolicy port ${p.port} is no container port`);
    }
    assert(np.spec.ingress.some((r) => r.ports.some((p) => p.port === "grpc")), "NetworkPolicy blocks gRPC");

    // Alerts use metrics the server exports.
    const rule = find(objs, "PrometheusRule", "compressd");
    for (const g of rule.spec.groups) {
      for (const r of g.rules) {
        for (const m of metricNamesIn(r.expr)) {
          assert(METRICS_IN_SOURCE.has(baseMetric(m)), `alert ${r.alert}: ${m} is not a compressd metric`);
        }
      }
    }

    const gpus = Number(c.resources?.limits?.["nvidia.com/gpu"] ?? 0);
    if (t.endsWith("gpu")) {
      assert(gpus >= 1, "gpu overlay: no nvidia.com/gpu limit");
      assert(env.COMPRESSD_USE_CUDA === "true", "gpu overlay: COMPRESSD_USE_CUDA must be true");
      assert(/cuda/.test(c.image), `gpu overlay: image ${c.image} is not the CUDA build`);
    } else {
      assert(gpus === 0, `${t}: asks for a GPU`);
    }
    return flags ? `flags checked against ${path.basename(compressdBin)}` : "flags not checked (no --compressd)";
  });
}

check("grafana dashboard", () => {
  const dash = JSON.parse(fs.readFileSync(path.join(deployDir, "grafana/compressd-dashboard.json"), "utf8"));
  const titles = [];
  for (const panel of dash.panels) {
    if (panel.type === "row") continue;
    titles.push(panel.title);
    assert(panel.targets?.length, `panel ${panel.title}: no queries`);
    for (const target of panel.targets) {
      const names = metricNamesIn(target.expr);
      assert(names.length, `panel ${panel.title}: query ${target.expr} uses no compressd metric`);
      for (const m of names) {
        assert(METRICS_IN_SOURCE.has(baseMetric(m)), `panel ${panel.title}: ${m} is not a compressd metric`);
      }
    }
  }
  for (const want of [/queue/i, /outcome/i, /duration/i, /upload/i, /worker/i]) {
    assert(titles.some((x) => want.test(x)), `no panel for ${want}`);
  }
  return `${titles.length} panels`;
});

// --- 3b. The real server with an overlay's configuration ----------------------

function makeCerts(dir) {
  const run = (...a) => execFileSync("openssl", a, { cwd: dir, stdio: "ignore" });
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
      "-keyout", "ca.key", "-out", "ca.crt");
  run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "tls.key",
      "-out", "tls.csr");
  fs.writeFileSync(path.join(dir, "ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "1", "-extfile", "ext.cnf", "-out", "tls.crt");
}

async function startWithConfigMap(objs, dir) {
  const cm = find(objs, "ConfigMap", "compressd-config").data;
  const env = { ...process.env };
  for (const [k, v] of Object.entries(cm)) env[k] = v;
  // Same values, except what only exists in a pod: addresses (port 0 on
  // loopback), files (a temp dir) and devices.
  env.COMPRESSD_LISTEN = "127.0.0.1:0";
  env.COMPRESSD_HEALTH_LISTEN = "127.0.0.1:0";
  env.COMPRESSD_METRICS_LISTEN = "127.0.0.1:0";
  env.COMPRESSD_DATA_DIR = path.join(dir, "data");
  env.COMPRESSD_TLS_CERT = path.join(dir, "tls.crt");
  env.COMPRESSD_TLS_KEY = path.join(dir, "tls.key");
  if (cm.COMPRESSD_TLS_CLIENT_CA) env.COMPRESSD_TLS_CLIENT_CA = path.join(dir, "ca.crt");
  env.COMPRESSD_TOKEN_FILE = path.join(dir, "tokens");
  env.COMPRESSD_USE_CUDA = "false";
  env.OPENBLAS_CORETYPE = env.OPENBLAS_CORETYPE ?? "Haswell";
  fs.writeFileSync(env.COMPRESSD_TOKEN_FILE, "deploy-test-token-0123456789 team-a\n");
  const child = spawn(compressdBin, [], { env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => { stdout += d; });
  child.stderr.on("data", (d) => { stderr += d; });
  const deadline = Date.now() + 120000;
  while (!/listening on port \d+/.test(stdout)) {
    if (child.exitCode !== null) throw new Error(`compressd exited ${child.exitCode}: ${stderr}`);
    if (Date.now() > deadline) { child.kill("SIGKILL"); throw new Error(`compressd did not start: ${stderr}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  const port = Number(/listening on port (\d+)/.exec(stdout)[1]);
  const metricsPort = Number(/metrics on port (\d+)/.exec(stdout)[1]);
  const healthPort = Number(/health-only plaintext port (\d+)/.exec(stderr)?.[1]);
  return { child, port, metricsPort, healthPort, stderr: () => stderr };
}

async function stop(server) {
  server.child.kill("SIGTERM");
  const deadline = Date.now() + 60000;
  while (server.child.exitCode === null && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  if (server.child.exitCode === null) server.child.kill("SIGKILL");
  return server.child.exitCode;
}

if (compressdBin && compressctlBin) {
  for (const t of ["overlays/cpu", "overlays/gpu"]) {
    if (!rendered[t]) continue;
    await checkAsync(`compressd runs with ${t}'s ConfigMap`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "compressd-deploy-"));
      try {
        makeCerts(dir);
        const server = await startWithConfigMap(rendered[t], dir);
        try {
          assert(server.healthPort > 0, `no health port announced: ${server.stderr()}`);
          const probe = execFileSync(compressctlBin,
            ["--server", `127.0.0.1:${server.healthPort}`, "--timeout", "10", "health"],
            { encoding: "utf8" }).trim();
          assert(probe === "SERVING", `health port answered ${probe}`);
          // The gRPC port speaks TLS only: a plaintext client gets nowhere.
          let plaintext = "";
          try {
            plaintext = execFileSync(compressctlBin,
              ["--server", `127.0.0.1:${server.port}`, "--timeout", "5", "health"],
              { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
          } catch (e) {
            plaintext = `exit ${e.status}`;
          }
          assert(plaintext.startsWith("exit"), `plaintext client reached the TLS port: ${plaintext}`);
          const tls = execFileSync(compressctlBin,
            ["--server", `localhost:${server.port}`, "--ca", path.join(dir, "ca.crt"), "--timeout", "10",
             "health"], { encoding: "utf8" }).trim();
          assert(tls === "SERVING", `TLS health answered ${tls}`);
          const res = await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`);
          const text = await res.text();
          for (const m of ["compressd_queue_depth", "compressd_workers", "compressd_workers_busy"]) {
            assert(new RegExp(`^${m} `, "m").test(text), `/metrics has no ${m}`);
          }
        } finally {
          const code = await stop(server);
          assert(code === 0, `compressd exited ${code} after SIGTERM`);
        }
        return "health SERVING on the probe port, TLS on the gRPC port, metrics served, clean drain";
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
} else {
  console.log("NOTE server checks skipped: pass --compressd and --compressctl");
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
