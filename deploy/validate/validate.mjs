// Checks deploy/ without a cluster:
//  1. renders every kustomization meant to be deployed (render.mjs: the
//     single-node base and overlays, the scale-out base and overlays), and
//     where `kubectl kustomize` exists, renders them with it too and requires
//     the same objects; a kustomization directory that is in neither list
//     fails, so a new overlay cannot go unchecked;
//  2. checks every object against the Kubernetes API schemas
//     (kubernetes-models), prometheus-operator's (ServiceMonitor,
//     PrometheusRule) or KEDA's (ScaledObject, TriggerAuthentication); an
//     object of any other kind fails;
//  3. checks the manifests against each other and against the real server:
//     every ConfigMap, Secret, key, volume, service account and Service a
//     pod refers to exists; Services, PodDisruptionBudgets, NetworkPolicies
//     and ServiceMonitors select pods (Services) with the ports they name;
//     HorizontalPodAutoscalers and ScaledObjects target workloads that exist
//     and nothing else scales; COMPRESSD_ variables are flags
//     `compressd --help` lists; listen addresses are the container ports,
//     probes hit the health port, the grace period outlasts the drain,
//     mounts cover the configured paths; per role: `all` owns a
//     ReadWriteOnce claim in a one-replica StatefulSet, `api` and `worker`
//     share one PostgreSQL database and one blob store and keep only caches
//     on local disk, GPU pods ask for one GPU with the CUDA image and
//     --use_cuda; network policies give workers no ingress but metrics and
//     health, the API its gRPC port; every pod runs non-root with a
//     read-only root filesystem; alert and dashboard queries use metrics
//     /metrics serves. Then it starts compressd with each single-node
//     overlay's ConfigMap (addresses on 127.0.0.1:0, files in a temp dir,
//     TLS certificates made with openssl) and asks its plaintext health port
//     with `compressctl health`; and it starts a throwaway PostgreSQL 15 to
//     run KEDA's queue queries against the job states they must count, and,
//     with --compressd, the migrate Job's command (twice at once) and the
//     queries against the schema it creates.
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
import {
  containerPort, effectiveEnv, egressAllows, egressOf, envValue, find, findOpt, ingressOf,
  labelSelectorMatches, podTemplates, secretKeys, secretValue, selects,
} from "./k8s.mjs";
import { startPostgres } from "./postgres.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const deployDir = path.resolve(here, "..");
const repoDir = path.resolve(deployDir, "..");
// The single-node mode (compressd --role=all, one StatefulSet pod) and the
// scale-out mode (api + workers over PostgreSQL and S3).
const SINGLE = ["base", "overlays/single", "overlays/cpu", "overlays/gpu"];
const SCALEOUT = ["scaleout", "overlays/scaleout", "overlays/scaleout-with-postgres"];
const TARGETS = [...SINGLE, ...SCALEOUT];
// Kustomizations that only other kustomizations include.
const PARTS = ["common"];
// Variables compressd reads that are not flags (server/store/s3/s3_config.h).
const NON_FLAG_ENV = new Set(["COMPRESSD_S3_ENDPOINT"]);

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
// Collects every problem of one check instead of stopping at the first.
function problems() {
  const list = [];
  return {
    add: (cond, message) => { if (!cond) list.push(message); },
    done: () => { if (list.length) throw new Error(`\n  - ${list.join("\n  - ")}`); },
  };
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

check("every kustomization is validated", () => {
  const found = [];
  const walk = (rel) => {
    const abs = path.join(deployDir, rel);
    for (const entry of fs.readdirSync(abs, { withFileTypes: true })) {
      if (!entry.isDirectory() || entry.name === "node_modules") continue;
      const sub = rel ? `${rel}/${entry.name}` : entry.name;
      if (fs.existsSync(path.join(deployDir, sub, "kustomization.yaml"))) found.push(sub);
      walk(sub);
    }
  };
  walk("");
  const missing = found.filter((d) => !TARGETS.includes(d) && !PARTS.includes(d));
  assert(missing.length === 0, `not in validate.mjs's TARGETS: ${missing.join(", ")}`);
  const gone = TARGETS.filter((t) => !found.includes(t));
  assert(gone.length === 0, `TARGETS without a kustomization.yaml: ${gone.join(", ")}`);
  return `${TARGETS.length} targets`;
});

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

// Kubernetes' own kinds from kubernetes-models; the CRDs deploy/ uses from
// the kubernetes-models packages generated from their projects' CRDs.
const CRD_MODELS = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
};

async function modelFor(obj) {
  const [group, version] = obj.apiVersion.includes("/")
    ? obj.apiVersion.split("/")
    : ["", obj.apiVersion];
  const modulePath = CRD_MODELS[group]
    ? `${CRD_MODELS[group]}/${group}/${version}/${obj.kind}`
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

const flags = (() => {
  try {
    return serverFlags();
  } catch (e) {
    check("compressd --help", () => { throw e; });
    return null;
  }
})();

const METRICS_IN_SOURCE = (() => {
  const src = fs.readFileSync(path.join(repoDir, "server/service/metrics.cc"), "utf8");
  return new Set([...src.matchAll(/\.Name\("([a-z_]+)"\)/g)].map((m) => m[1]));
})();

// Job states as the jobs table stores them (the proto's enum numbers).
const JOB_STATES = (() => {
  const proto = fs.readFileSync(path.join(repoDir, "proto/compress/v1/compress.proto"), "utf8");
  const states = {};
  for (const m of proto.matchAll(/JOB_STATE_([A-Z]+)\s*=\s*(\d+)/g)) states[m[1]] = Number(m[2]);
  if (states.QUEUED === undefined || states.RUNNING === undefined) {
    throw new Error("proto/compress/v1/compress.proto: no JOB_STATE_QUEUED / JOB_STATE_RUNNING");
  }
  return states;
})();
// jobs.device_kind values (server/store/pg_metadata_store.cc, schema 2).
const DEVICE_KINDS = ["any", "cpu", "cuda"];

function metricNamesIn(expr) {
  return [...expr.matchAll(/\b(compressd_[a-z_]+)\b/g)].map((m) => m[1]);
}
function baseMetric(name) {
  return name.replace(/_(bucket|sum|count)$/, "");
}

// compressd's containers: the image compressd or compressd-cuda, under any
// registry and tag.
function isCompressdImage(image) {
  const name = (image ?? "").replace(/[@:][^/]*$/, "");
  return /(^|\/)compressd(-cuda)?$/.test(name);
}

// Every compressd container of a rendered target, with what it is: the
// workload, the pod template, its environment and its role ("all", "api",
// "worker" or "migrate").
function compressdContainers(objs) {
  const out = [];
  for (const tpl of podTemplates(objs)) {
    for (const c of tpl.spec.containers ?? []) {
      if (!isCompressdImage(c.image)) continue;
      const { env, problems: envProblems } = effectiveEnv(objs, c);
      const args = [...(c.command ?? []).slice(1), ...(c.args ?? [])];
      const role = ["migrate", "gc"].includes(args[0]) ? args[0] : (env.COMPRESSD_ROLE?.value ?? "all");
      const gpus = Number(c.resources?.limits?.["nvidia.com/gpu"] ?? 0);
      out.push({ tpl, c, env, envProblems, role, gpus, where: `${tpl.name} container ${c.name}` });
    }
  }
  return out;
}

function volumeOfMount(tpl, c, file) {
  const m = (c.volumeMounts ?? [])
    .filter((x) => file === x.mountPath || file.startsWith(`${x.mountPath}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  if (!m) return {};
  return { mount: m, volume: (tpl.spec.volumes ?? []).find((v) => v.name === m.name) };
}

function parsePgUrl(url) {
  const u = new URL(url);
  return {
    scheme: u.protocol.replace(/:$/, ""),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    host: u.hostname,
    port: Number(u.port || 5432),
    db: u.pathname.replace(/^\//, ""),
  };
}

// 3a. References: everything a pod, an autoscaler or a monitor names exists.
for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`references ${t}`, () => {
    const p = problems();
    for (const tpl of podTemplates(objs)) {
      const sa = tpl.spec.serviceAccountName;
      if (sa && sa !== "default") p.add(findOpt(objs, "ServiceAccount", sa), `${tpl.name}: no ServiceAccount ${sa}`);
      const volumeNames = new Set((tpl.spec.volumes ?? []).map((v) => v.name));
      for (const v of tpl.spec.volumes ?? []) {
        if (v.secret) {
          const s = findOpt(objs, "Secret", v.secret.secretName);
          p.add(s || v.secret.optional, `${tpl.name}: volume ${v.name}: no Secret ${v.secret.secretName}`);
          for (const item of v.secret.items ?? []) {
            p.add(!s || secretKeys(s).includes(item.key), `${tpl.name}: volume ${v.name}: Secret has no key ${item.key}`);
          }
        }
        if (v.configMap) {
          p.add(findOpt(objs, "ConfigMap", v.configMap.name) || v.configMap.optional,
                `${tpl.name}: volume ${v.name}: no ConfigMap ${v.configMap.name}`);
        }
        if (v.persistentVolumeClaim) {
          p.add(findOpt(objs, "PersistentVolumeClaim", v.persistentVolumeClaim.claimName),
                `${tpl.name}: volume ${v.name}: no PersistentVolumeClaim ${v.persistentVolumeClaim.claimName}`);
        }
      }
      for (const c of [...(tpl.spec.containers ?? []), ...(tpl.spec.initContainers ?? [])]) {
        for (const m of c.volumeMounts ?? []) {
          p.add(volumeNames.has(m.name), `${tpl.name} container ${c.name}: mount ${m.mountPath}: no volume ${m.name}`);
        }
        for (const msg of effectiveEnv(objs, c).problems) p.add(false, `${tpl.name} container ${c.name}: ${msg}`);
      }
      if (tpl.owner.kind === "StatefulSet") {
        p.add(findOpt(objs, "Service", tpl.owner.spec.serviceName),
              `${tpl.name}: serviceName ${tpl.owner.spec.serviceName} is no Service`);
      }
    }
    for (const ta of objs.filter((o) => o.kind === "TriggerAuthentication")) {
      for (const ref of ta.spec.secretTargetRef ?? []) {
        const s = findOpt(objs, "Secret", ref.name);
        p.add(s, `TriggerAuthentication ${ta.metadata.name}: no Secret ${ref.name}`);
        p.add(!s || secretKeys(s).includes(ref.key), `TriggerAuthentication ${ta.metadata.name}: Secret ${ref.name} has no key ${ref.key}`);
      }
    }
    p.done();
  });
}

// 3b. Selectors: workloads, Services, budgets, policies and monitors select
// what they should, and no two workloads claim each other's pods.
for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`selectors ${t}`, () => {
    const p = problems();
    const tpls = podTemplates(objs);
    for (const tpl of tpls) {
      // Jobs (and a CronJob's Jobs) get generated selectors.
      if ((tpl.owner.kind === "Job" && !tpl.owner.spec.selector) || tpl.owner.kind === "CronJob") continue;
      p.add(labelSelectorMatches(tpl.owner.spec.selector, tpl.labels) &&
            Object.keys(tpl.owner.spec.selector?.matchLabels ?? {}).length > 0,
            `${tpl.name}: its selector misses its own pod template`);
      for (const other of tpls) {
        if (other === tpl || other.owner.kind === "Job" || other.owner.kind === "CronJob") continue;
        p.add(!labelSelectorMatches(tpl.owner.spec.selector, other.labels),
              `${tpl.name}'s selector also matches ${other.name}'s pods: the controllers would fight over them`);
      }
    }
    for (const svc of objs.filter((o) => o.kind === "Service")) {
      const selected = tpls.filter((x) => selects(svc.spec.selector, x.labels));
      p.add(selected.length > 0, `Service ${svc.metadata.name} selects no pod template`);
      for (const sp of svc.spec.ports ?? []) {
        for (const x of selected) {
          p.add(containerPort(x.spec, sp.targetPort ?? sp.port) !== undefined,
                `Service ${svc.metadata.name} port ${sp.name}: ${x.name} has no container port ${sp.targetPort}`);
        }
      }
    }
    for (const pdb of objs.filter((o) => o.kind === "PodDisruptionBudget")) {
      p.add(tpls.some((x) => labelSelectorMatches(pdb.spec.selector, x.labels)) &&
            Object.keys(pdb.spec.selector?.matchLabels ?? {}).length > 0,
            `PodDisruptionBudget ${pdb.metadata.name} selects no pod template`);
    }
    for (const np of objs.filter((o) => o.kind === "NetworkPolicy")) {
      const selected = tpls.filter((x) => labelSelectorMatches(np.spec.podSelector, x.labels));
      p.add(selected.length > 0, `NetworkPolicy ${np.metadata.name} selects no pod template`);
      for (const rule of np.spec.ingress ?? []) {
        for (const port of rule.ports ?? []) {
          for (const x of selected) {
            p.add(containerPort(x.spec, port.port) !== undefined || typeof port.port === "number",
                  `NetworkPolicy ${np.metadata.name}: port ${port.port} is no container port of ${x.name}`);
          }
        }
      }
    }
    const services = objs.filter((o) => o.kind === "Service");
    for (const sm of objs.filter((o) => o.kind === "ServiceMonitor")) {
      const selected = services.filter((s) => labelSelectorMatches(sm.spec.selector, s.metadata.labels));
      p.add(selected.length > 0 && Object.keys(sm.spec.selector?.matchLabels ?? {}).length > 0,
            `ServiceMonitor ${sm.metadata.name} selects no Service`);
      for (const e of sm.spec.endpoints ?? []) {
        for (const s of selected) {
          if (!s.spec.ports.some((x) => x.name === "metrics")) continue;  // e.g. a headless twin
          p.add(s.spec.ports.some((x) => x.name === e.port && x.targetPort === "metrics"),
                `ServiceMonitor ${sm.metadata.name}: port ${e.port} is not Service ${s.metadata.name}'s metrics port`);
        }
      }
    }
    // Every compressd pod with a metrics port is scraped: a ServiceMonitor
    // selects a Service that selects the pod.
    for (const x of compressdContainers(objs)) {
      if (!(x.c.ports ?? []).some((q) => q.name === "metrics")) continue;
      p.add(services.some((s) => selects(s.spec.selector, x.tpl.labels) &&
                                 (s.spec.ports ?? []).some((q) => q.targetPort === "metrics") &&
                                 objs.some((sm) => sm.kind === "ServiceMonitor" && labelSelectorMatches(sm.spec.selector, s.metadata.labels))),
            `${x.where}: no ServiceMonitor scrapes its metrics (no monitored Service with a metrics port selects it)`);
    }
    // Every Service that serves compressd metrics is scraped.
    for (const s of services.filter((x) => (x.spec.ports ?? []).some((q) => q.targetPort === "metrics"))) {
      p.add(objs.some((sm) => sm.kind === "ServiceMonitor" && labelSelectorMatches(sm.spec.selector, s.metadata.labels)),
            `Service ${s.metadata.name} serves metrics but no ServiceMonitor selects it`);
    }
    p.done();
  });
}

// 3c. Autoscaling: HPAs and KEDA ScaledObjects target workloads that exist,
// one scaler per workload, and KEDA polls the compressd database with a query
// for the pool it scales.
function kedaQueryProblems(query, pool) {
  const out = [];
  const q = query.replace(/\s+/g, " ");
  if (!/\bcount\s*\(/i.test(q)) out.push(`query does not count: ${query}`);
  if (!/\bfrom\s+jobs\b/i.test(q)) out.push(`query does not read the jobs table: ${query}`);
  const states = /\bstate\s*(?:=\s*(\d+)|in\s*\(([\d\s,]+)\))/i.exec(q);
  const listed = states ? (states[1] ?? states[2]).split(",").map((s) => Number(s.trim())) : [];
  if (!listed.includes(JOB_STATES.QUEUED)) {
    out.push(`query does not count queued jobs (state = ${JOB_STATES.QUEUED}): ${query}`);
  }
  const kinds = [...q.matchAll(/'([a-z]+)'/g)].map((m) => m[1]);
  for (const k of ["any", pool]) if (!kinds.includes(k)) out.push(`query misses device_kind '${k}' for a ${pool} pool`);
  for (const k of DEVICE_KINDS.filter((x) => x !== "any" && x !== pool)) {
    if (kinds.includes(k)) out.push(`query counts device_kind '${k}' jobs, which a ${pool} pool cannot run`);
  }
  return out;
}

function poolOf(objs, workload) {
  const cs = compressdContainers(objs).filter((x) => x.tpl.owner === workload);
  return cs.some((x) => x.env.COMPRESSD_USE_CUDA?.value === "true") ? "cuda" : "cpu";
}

for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`autoscaling ${t}`, () => {
    const p = problems();
    const scaled = new Map();
    const target = (ref, who) => {
      const kind = ref.kind ?? "Deployment";
      const o = findOpt(objs, kind, ref.name);
      p.add(o, `${who}: no ${kind} ${ref.name} to scale`);
      if (!o) return null;
      p.add(!scaled.has(o), `${kind} ${ref.name} is scaled by both ${scaled.get(o)} and ${who}: they would fight`);
      scaled.set(o, who);
      p.add(o.spec.replicas === undefined,
            `${kind} ${ref.name} sets replicas although ${who} owns the count: every apply would reset it`);
      return o;
    };
    for (const hpa of objs.filter((o) => o.kind === "HorizontalPodAutoscaler")) {
      const who = `HorizontalPodAutoscaler ${hpa.metadata.name}`;
      const o = target(hpa.spec.scaleTargetRef, who);
      p.add((hpa.spec.minReplicas ?? 1) <= hpa.spec.maxReplicas, `${who}: minReplicas > maxReplicas`);
      for (const m of hpa.spec.metrics ?? []) {
        if (m.type !== "Resource") continue;
        for (const c of o?.spec.template.spec.containers ?? []) {
          p.add(c.resources?.requests?.[m.resource.name] !== undefined,
                `${who} scales on ${m.resource.name}, but container ${c.name} requests none (utilization is relative to the request)`);
        }
      }
    }
    for (const so of objs.filter((o) => o.kind === "ScaledObject")) {
      const who = `ScaledObject ${so.metadata.name}`;
      const o = target(so.spec.scaleTargetRef, who);
      const min = so.spec.minReplicaCount ?? 0;
      p.add(min === 0 || min === 1, `${who}: minReplicaCount ${min}, want 0 or 1 (deploy/README.md "Scaling")`);
      p.add((so.spec.maxReplicaCount ?? 100) >= Math.max(1, min), `${who}: maxReplicaCount below minReplicaCount`);
      p.add((so.spec.triggers ?? []).length > 0, `${who}: no triggers`);
      for (const trig of so.spec.triggers ?? []) {
        if (trig.type !== "postgresql") continue;
        const ta = findOpt(objs, trig.authenticationRef?.kind ?? "TriggerAuthentication", trig.authenticationRef?.name);
        p.add(ta, `${who}: no TriggerAuthentication ${trig.authenticationRef?.name}`);
        const conn = ta?.spec.secretTargetRef?.find((r) => r.parameter === "connection");
        p.add(conn || trig.metadata?.connectionFromEnv || trig.metadata?.host,
              `${who}: TriggerAuthentication ${ta?.metadata.name} gives no "connection" parameter`);
        p.add(Number(trig.metadata?.targetQueryValue) > 0, `${who}: targetQueryValue must be a positive number`);
        if (o) {
          for (const msg of kedaQueryProblems(trig.metadata?.query ?? "", poolOf(objs, o))) p.add(false, `${who}: ${msg}`);
          // KEDA must poll the database the workers claim from.
          for (const x of compressdContainers(objs).filter((y) => y.tpl.owner === o)) {
            const db = x.env.COMPRESSD_DATABASE;
            p.add(conn && db?.secret === conn.name && db?.key === conn.key,
                  `${who}: polls Secret ${conn?.name}/${conn?.key}, but ${x.where} uses ${db?.secret}/${db?.key} as its database`);
          }
        }
        if (conn) {
          const url = secretValue(findOpt(objs, "Secret", conn.name), conn.key) ?? "";
          let host = "";
          try {
            host = parsePgUrl(url).host;
          } catch {
            p.add(false, `${who}: Secret ${conn.name}/${conn.key} is no URL: ${url}`);
          }
          p.add(!host || host.includes("."),
                `${who}: database host ${host} is a bare name; KEDA's operator runs in another namespace and needs <service>.<namespace>.svc...`);
        }
      }
    }
    p.done();
  });
}

// 3d. Every pod: non-root, read-only root filesystem, no capabilities, no
// service-account token, memory limit and CPU request.
for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`security and resources ${t}`, () => {
    const p = problems();
    for (const tpl of podTemplates(objs)) {
      const sc = tpl.spec.securityContext ?? {};
      p.add(sc.runAsNonRoot === true, `${tpl.name}: runAsNonRoot is not true`);
      p.add(sc.seccompProfile?.type === "RuntimeDefault", `${tpl.name}: no RuntimeDefault seccomp profile`);
      p.add(tpl.spec.automountServiceAccountToken === false, `${tpl.name}: mounts a service-account token`);
      for (const c of [...(tpl.spec.containers ?? []), ...(tpl.spec.initContainers ?? [])]) {
        const csc = c.securityContext ?? {};
        p.add(csc.allowPrivilegeEscalation === false, `${tpl.name} ${c.name}: allowPrivilegeEscalation is not false`);
        p.add(csc.readOnlyRootFilesystem === true, `${tpl.name} ${c.name}: root filesystem is writable`);
        p.add((csc.capabilities?.drop ?? []).includes("ALL"), `${tpl.name} ${c.name}: capabilities not dropped`);
        p.add(c.resources?.limits?.memory, `${tpl.name} ${c.name}: no memory limit`);
        p.add(c.resources?.requests?.cpu, `${tpl.name} ${c.name}: no CPU request`);
      }
    }
    p.done();
  });
}

// 3e. compressd itself: flags, ports, probes, draining, mounts and what each
// role needs.
for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`compressd pods ${t}`, () => {
    const p = problems();
    const all = compressdContainers(objs);
    p.add(all.length > 0, "no compressd container");
    for (const x of all) {
      const { tpl, c, env, role, gpus, where } = x;
      const val = (name) => envValue(objs, env, name);
      if (flags) {
        for (const key of Object.keys(env).filter((k) => k.startsWith("COMPRESSD_") && !NON_FLAG_ENV.has(k))) {
          const flag = key.slice("COMPRESSD_".length).toLowerCase();
          p.add(flags.has(flag), `${where}: ${key}: compressd has no flag --${flag}`);
        }
      }
      p.add(["all", "api", "worker", "migrate", "gc"].includes(role), `${where}: unknown role ${role}`);
      const dbUrl = val("COMPRESSD_DATABASE") ?? "";
      if (role === "migrate") {
        p.add(tpl.owner.kind === "Job", `${where}: compressd migrate runs once: a Job, not a ${tpl.owner.kind}`);
        p.add(["OnFailure", "Never"].includes(tpl.spec.restartPolicy), `${where}: a Job's pod needs restartPolicy OnFailure or Never`);
        p.add(env.COMPRESSD_DATABASE?.secret, `${where}: COMPRESSD_DATABASE must come from a Secret`);
        p.add(/^postgres(ql)?:\/\//.test(dbUrl), `${where}: COMPRESSD_DATABASE is not a postgresql:// URL`);
        continue;
      }
      if (role === "gc") {
        // `compressd gc`: marks from the database, sweeps the S3 bucket.
        p.add(tpl.owner.kind === "CronJob", `${where}: compressd gc runs on a schedule: a CronJob, not a ${tpl.owner.kind}`);
        p.add(tpl.owner.spec.concurrencyPolicy === "Forbid", `${where}: two gc runs at once would race: concurrencyPolicy Forbid`);
        p.add(["OnFailure", "Never"].includes(tpl.spec.restartPolicy), `${where}: a Job's pod needs restartPolicy OnFailure or Never`);
        p.add(env.COMPRESSD_DATABASE?.secret, `${where}: COMPRESSD_DATABASE must come from a Secret`);
        p.add(/^postgres(ql)?:\/\//.test(dbUrl), `${where}: COMPRESSD_DATABASE is not a postgresql:// URL`);
        p.add(/^s3:\/\//.test(val("COMPRESSD_BLOB_STORE") ?? ""), `${where}: gc sweeps an S3 bucket: COMPRESSD_BLOB_STORE must be s3://`);
        for (const k of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) p.add(env[k]?.secret, `${where}: ${k} must come from a Secret`);
        const minAge = val("COMPRESSD_GC_MIN_AGE") ?? "24h";
        const hours = /^(\d+)h$/.exec(minAge);
        p.add(hours && Number(hours[1]) > 1, `${where}: COMPRESSD_GC_MIN_AGE ${minAge} must be whole hours above the 1 h reuse window`);
        continue;
      }

      // Ports and probes.
      const ports = Object.fromEntries((c.ports ?? []).map((q) => [q.name, q.containerPort]));
      const listen = val("COMPRESSD_LISTEN");
      if (role === "worker") {
        p.add(ports.grpc === undefined, `${where}: a worker serves no API, yet declares a grpc port`);
      } else {
        p.add(listen && portOf(listen) === ports.grpc, `${where}: COMPRESSD_LISTEN ${listen} is not the container port grpc ${ports.grpc}`);
      }
      const health = val("COMPRESSD_HEALTH_LISTEN");
      const metrics = val("COMPRESSD_METRICS_LISTEN");
      p.add(health && portOf(health) === ports.health, `${where}: COMPRESSD_HEALTH_LISTEN ${health} is not the container port health ${ports.health}`);
      p.add(metrics && portOf(metrics) === ports.metrics, `${where}: COMPRESSD_METRICS_LISTEN ${metrics} is not the container port metrics ${ports.metrics}`);
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        p.add(c[probe]?.grpc, `${where}: ${probe} must be a native gRPC probe`);
        p.add(!c[probe]?.grpc || c[probe].grpc.port === ports.health,
              `${where}: ${probe} port ${c[probe]?.grpc?.port} is not the health port ${ports.health}`);
      }
      const grace = durationSeconds(val("COMPRESSD_DRAIN_GRACE") ?? "30s");
      p.add(tpl.spec.terminationGracePeriodSeconds >= grace + 10,
            `${where}: terminationGracePeriodSeconds ${tpl.spec.terminationGracePeriodSeconds} must exceed the drain grace ${grace}s by 10s`);

      // Files: every configured path lies under a mount of the right volume.
      for (const key of ["COMPRESSD_DATA_DIR", "COMPRESSD_TLS_CERT", "COMPRESSD_TLS_KEY", "COMPRESSD_TOKEN_FILE",
                         "COMPRESSD_TLS_CLIENT_CA"]) {
        const file = val(key);
        if (!file) continue;
        const { mount, volume } = volumeOfMount(tpl, c, file);
        p.add(mount && volume, `${where}: ${key}=${file} is not under any volume mount`);
        if (volume?.secret) {
          const secret = findOpt(objs, "Secret", volume.secret.secretName);
          const fileKey = path.relative(mount.mountPath, file);
          p.add(secret && secretKeys(secret).includes(fileKey), `${where}: ${key}: Secret ${volume.secret.secretName} has no key ${fileKey}`);
        }
      }
      const data = volumeOfMount(tpl, c, val("COMPRESSD_DATA_DIR") ?? "/nonexistent").volume;
      const claim = data?.persistentVolumeClaim && findOpt(objs, "PersistentVolumeClaim", data.persistentVolumeClaim.claimName);

      // What each role needs.
      if (role === "all") {
        p.add(!dbUrl, `${where}: --role=all keeps its metadata in SQLite; COMPRESSD_DATABASE must be empty`);
        p.add(claim && claim.spec.accessModes.includes("ReadWriteOnce"),
              `${where}: --role=all's data directory must be on a ReadWriteOnce PersistentVolumeClaim`);
        p.add(tpl.owner.kind === "StatefulSet" && tpl.owner.spec.replicas === 1,
              `${where}: --role=all owns its store alone: one StatefulSet replica, not ${tpl.owner.kind} x${tpl.owner.spec.replicas}`);
      } else {
        p.add(env.COMPRESSD_DATABASE?.secret, `${where}: COMPRESSD_DATABASE must come from a Secret (it holds the password)`);
        p.add(/^postgres(ql)?:\/\//.test(dbUrl), `${where}: --role=${role} needs a postgresql:// database, not "${dbUrl}"`);
        const blobs = val("COMPRESSD_BLOB_STORE") ?? "";
        if (blobs.startsWith("s3://")) {
          for (const k of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) {
            p.add(env[k]?.secret, `${where}: ${k} must come from a Secret`);
          }
          p.add(data?.emptyDir, `${where}: with blobs in S3 the data directory is a cache: an emptyDir`);
        } else {
          p.add(claim && claim.spec.accessModes.includes("ReadWriteMany"),
                `${where}: --role=${role} without --blob_store=s3:// needs the data directory on a ReadWriteMany claim every replica sees`);
        }
        p.add(tpl.owner.kind === "Deployment", `${where}: --role=${role} is stateless: a Deployment`);
      }
      if (role === "api" || role === "all") {
        p.add(val("COMPRESSD_TLS_CERT") && val("COMPRESSD_TLS_KEY"), `${where}: the API must serve TLS`);
        p.add(val("COMPRESSD_TOKEN_FILE"), `${where}: the API must check tokens`);
      }
      if (role === "worker") {
        p.add(Number(val("COMPRESSD_CPU_WORKERS") ?? 0) + gpus >= 1, `${where}: a worker with no job slot`);
      }
      if (role === "all" || role === "worker") {
        const cuda = val("COMPRESSD_USE_CUDA") === "true";
        p.add(cuda === gpus > 0, `${where}: COMPRESSD_USE_CUDA=${val("COMPRESSD_USE_CUDA")} but nvidia.com/gpu ${gpus}`);
        if (gpus > 0) {
          p.add(/cuda/.test(c.image), `${where}: image ${c.image} is not the CUDA build`);
          p.add((tpl.spec.tolerations ?? []).some((tol) => tol.key === "nvidia.com/gpu"), `${where}: no toleration for the nvidia.com/gpu taint`);
          if (role === "worker") {
            p.add(gpus === 1 && Number(val("COMPRESSD_CPU_WORKERS") ?? 1) === 0,
                  `${where}: a GPU worker runs one job per GPU: nvidia.com/gpu 1 and COMPRESSD_CPU_WORKERS=0`);
          }
        } else {
          p.add(!/cuda/.test(c.image), `${where}: the CUDA image without a GPU`);
        }
      }
    }
    p.done();
    return flags ? `flags checked against ${path.basename(compressdBin)}` : "flags not checked (no --compressd)";
  });
}

// 3f. Network policies: every pod is isolated both ways; what gets in.
for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`network policies ${t}`, () => {
    const p = problems();
    for (const tpl of podTemplates(objs)) {
      const ingress = ingressOf(objs, tpl);
      p.add(ingress.isolated, `${tpl.name}: no NetworkPolicy isolates its ingress`);
      p.add(egressOf(objs, tpl).isolated, `${tpl.name}: no NetworkPolicy restricts its egress`);
      for (const r of ingress.rules) {
        p.add(r.ports !== null, `${tpl.name}: NetworkPolicy ${r.policy} lets every port in`);
      }
    }
    for (const x of compressdContainers(objs)) {
      const { tpl, c, where } = x;
      const ingress = ingressOf(objs, tpl);
      const ports = Object.fromEntries((c.ports ?? []).map((q) => [q.name, q.containerPort]));
      const open = new Set(ingress.rules.flatMap((r) => r.ports ?? []));
      if (x.role === "api" || x.role === "all") {
        p.add(ingress.rules.some((r) => r.from === null && r.ports?.includes(ports.grpc)), `${where}: NetworkPolicy blocks gRPC`);
      }
      if (x.role === "worker" || x.role === "migrate" || x.role === "gc") {
        const allowed = new Set([ports.metrics, ports.health].filter(Boolean));
        for (const port of open) p.add(allowed.has(port), `${where}: a ${x.role} takes no connections, yet port ${port} is open`);
      }
      for (const r of ingress.rules) {
        if (ports.metrics !== undefined && r.ports?.includes(ports.metrics)) {
          p.add(r.from !== null, `${where}: metrics open to everyone (policy ${r.policy}); only the monitoring namespace`);
        }
      }
      // What a replica of the scale-out layout must reach.
      const egress = egressOf(objs, tpl);
      const dbUrl = envValue(objs, x.env, "COMPRESSD_DATABASE");
      if (dbUrl) {
        let port = 5432;
        try {
          port = parsePgUrl(dbUrl).port;
        } catch {
          // reported by the compressd pods check
        }
        p.add(egressAllows(egress, port), `${where}: egress to the database port ${port} is blocked`);
        p.add(egressAllows(egress, 53), `${where}: egress to DNS is blocked`);
      }
      if ((envValue(objs, x.env, "COMPRESSD_BLOB_STORE") ?? "").startsWith("s3://")) {
        const endpoint = envValue(objs, x.env, "COMPRESSD_S3_ENDPOINT");
        const port = endpoint ? Number(new URL(endpoint).port || (endpoint.startsWith("https") ? 443 : 80)) : 443;
        p.add(egressAllows(egress, port), `${where}: egress to the S3 endpoint's port ${port} is blocked`);
      }
    }
    p.done();
  });
}

// 3g. Alerts use metrics the server exports.
for (const t of TARGETS) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`alerts ${t}`, () => {
    const rules = objs.filter((o) => o.kind === "PrometheusRule");
    assert(rules.length > 0, "no PrometheusRule");
    let n = 0;
    for (const rule of rules) {
      for (const g of rule.spec.groups) {
        for (const r of g.rules) {
          n++;
          for (const m of metricNamesIn(r.expr)) {
            assert(METRICS_IN_SOURCE.has(baseMetric(m)), `alert ${r.alert}: ${m} is not a compressd metric`);
          }
        }
      }
    }
    return `${n} rules`;
  });
}

// 3h. The single-node layout: one pod owns SQLite and the blobs.
for (const t of SINGLE) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`single-node layout ${t}`, () => {
    const sts = find(objs, "StatefulSet", "compressd");
    assert(sts.spec.replicas === 1, "replicas must be 1: one process owns the SQLite store");
    const headless = find(objs, "Service", sts.spec.serviceName);
    assert(headless.spec.clusterIP === "None", "the StatefulSet's serviceName must be headless");
    const svc = find(objs, "Service", "compressd");
    assert(selects(svc.spec.selector, sts.spec.template.metadata.labels), "Service compressd selects no pod");
    assert(svc.spec.ports.some((q) => q.targetPort === "grpc"), "Service compressd has no gRPC port");
    const pdb = find(objs, "PodDisruptionBudget", "compressd");
    assert(labelSelectorMatches(pdb.spec.selector, sts.spec.template.metadata.labels), "PodDisruptionBudget selects no pod");
    const roles = compressdContainers(objs).map((x) => x.role);
    assert(roles.length === 1 && roles[0] === "all", `one compressd container with --role=all, not ${roles}`);
    assert(!objs.some((o) => o.kind === "Deployment"), "no Deployments in the single-node layout");
    const gpus = compressdContainers(objs)[0].gpus;
    assert(t.endsWith("gpu") === gpus > 0, t.endsWith("gpu") ? "gpu overlay: no GPU" : `${t}: asks for a GPU`);
  });
}

// 3i. The scale-out layout.
for (const t of SCALEOUT) {
  const objs = rendered[t];
  if (!objs) continue;
  check(`scale-out layout ${t}`, () => {
    const p = problems();
    const cs = compressdContainers(objs);
    const byRole = (r) => cs.filter((x) => x.role === r);
    p.add(byRole("all").length === 0, "a --role=all pod in the scale-out layout: it would run the queue on its own SQLite");
    p.add(!objs.some((o) => o.kind === "StatefulSet" && cs.some((x) => x.tpl.owner === o)), "compressd in a StatefulSet");

    // The API: two replicas or more, a budget that still lets a drain proceed.
    const api = byRole("api");
    p.add(api.length === 1, `one api Deployment, found ${api.length}`);
    for (const x of api) {
      const dep = x.tpl.owner;
      const hpa = objs.find((o) => o.kind === "HorizontalPodAutoscaler" && o.spec.scaleTargetRef.name === dep.metadata.name);
      p.add(hpa && (hpa.spec.minReplicas ?? 1) >= 2, `${x.where}: no HorizontalPodAutoscaler keeping 2 or more replicas`);
      const pdb = objs.find((o) => o.kind === "PodDisruptionBudget" && labelSelectorMatches(o.spec.selector, x.tpl.labels));
      p.add(pdb && pdb.spec.minAvailable >= 1, `${x.where}: no PodDisruptionBudget with minAvailable >= 1`);
      p.add(!pdb || !hpa || pdb.spec.minAvailable < (hpa.spec.minReplicas ?? 1),
            `${x.where}: PodDisruptionBudget minAvailable ${pdb?.spec.minAvailable} >= minReplicas ${hpa?.spec.minReplicas}: no node drain could ever evict an API pod`);
      const svc = findOpt(objs, "Service", "compressd");
      p.add(svc && selects(svc.spec.selector, x.tpl.labels), "Service compressd does not select the api pods");
      for (const w of byRole("worker")) {
        p.add(!svc || !selects(svc.spec.selector, w.tpl.labels), `Service compressd also selects ${w.where}, which serves no API`);
      }
    }

    // Workers: a CPU pool and a GPU pool, each scaled by KEDA.
    const workers = byRole("worker");
    p.add(workers.some((x) => x.gpus === 0), "no CPU worker Deployment");
    p.add(workers.some((x) => x.gpus > 0), "no GPU worker Deployment");
    for (const x of workers) {
      const so = objs.find((o) => o.kind === "ScaledObject" && o.spec.scaleTargetRef.name === x.tpl.owner.metadata.name);
      p.add(so?.spec.triggers?.some((tr) => tr.type === "postgresql"), `${x.where}: no ScaledObject with a postgresql trigger`);
    }

    // Schema migration as its own step.
    p.add(byRole("migrate").length === 1, "no Job running `compressd migrate`");
    p.add(byRole("gc").length === 1, "no CronJob running `compressd gc`");

    // One database and one blob store for every replica, or they split.
    const shared = (x) => JSON.stringify([x.env.COMPRESSD_DATABASE, envValue(objs, x.env, "COMPRESSD_BLOB_STORE") ?? null]);
    const stores = new Set([...api, ...workers, ...byRole("migrate"), ...byRole("gc")].map((x) => JSON.stringify(x.env.COMPRESSD_DATABASE)));
    p.add(stores.size === 1, `api, workers and migrate use different databases: ${[...stores]}`);
    const blobStores = new Set([...api, ...workers, ...byRole("gc")].map(shared));
    p.add(blobStores.size === 1, `api and workers use different database/blob store pairs: ${[...blobStores]}`);
    p.done();
    return `${api.length} api, ${workers.length} worker Deployments`;
  });
}

// 3j. The bundled PostgreSQL (overlays/scaleout-with-postgres): the database
// URL compressd and KEDA use names it, with its user, database and password.
for (const t of SCALEOUT) {
  const objs = rendered[t];
  const sts = objs?.find((o) => o.kind === "StatefulSet" &&
    o.spec.template.spec.containers.some((c) => /(^|\/)postgres:/.test(c.image)));
  if (!sts) continue;
  check(`bundled PostgreSQL ${t}`, () => {
    const p = problems();
    const c = sts.spec.template.spec.containers.find((x) => /(^|\/)postgres:/.test(x.image));
    p.add(/postgres:15(\b|[.-])/.test(c.image), `image ${c.image}: compressd needs PostgreSQL 15`);
    const { env } = effectiveEnv(objs, c);
    const tplLabels = sts.spec.template.metadata.labels;
    const svc = objs.find((o) => o.kind === "Service" && selects(o.spec.selector, tplLabels));
    p.add(svc, "no Service selects the PostgreSQL pod");
    const dbEnv = compressdContainers(objs).find((x) => x.role === "api")?.env.COMPRESSD_DATABASE;
    const url = dbEnv && secretValue(findOpt(objs, "Secret", dbEnv.secret), dbEnv.key);
    p.add(url, "no api database URL");
    if (svc && url) {
      const u = parsePgUrl(url);
      const ns = svc.metadata.namespace;
      p.add([`${svc.metadata.name}.${ns}.svc`, `${svc.metadata.name}.${ns}.svc.cluster.local`].includes(u.host),
            `database host ${u.host} is not ${svc.metadata.name}.${ns}.svc.cluster.local (KEDA connects from its own namespace)`);
      p.add(svc.spec.ports.some((q) => q.port === u.port), `database port ${u.port} is not a port of Service ${svc.metadata.name}`);
      p.add(u.user === envValue(objs, env, "POSTGRES_USER"), `database user ${u.user} != POSTGRES_USER ${envValue(objs, env, "POSTGRES_USER")}`);
      p.add(u.db === envValue(objs, env, "POSTGRES_DB"), `database ${u.db} != POSTGRES_DB ${envValue(objs, env, "POSTGRES_DB")}`);
      p.add(u.password === envValue(objs, env, "POSTGRES_PASSWORD"), "the password in the database URL is not POSTGRES_PASSWORD");
    }
    const pgdata = envValue(objs, env, "PGDATA") ?? "/var/lib/postgresql/data";
    const tpl = podTemplates(objs).find((x) => x.owner === sts);
    const { volume } = volumeOfMount(tpl, c, pgdata);
    p.add(volume?.persistentVolumeClaim, `PGDATA ${pgdata} is not on a PersistentVolumeClaim`);
    // compressd pods and KEDA may connect.
    const ingress = ingressOf(objs, tpl);
    const port = containerPort(tpl.spec, "postgres") ?? 5432;
    const rules = ingress.rules.filter((r) => r.ports?.includes(port));
    for (const x of compressdContainers(objs)) {
      p.add(rules.some((r) => r.from === null || r.from.some((f) => f.podSelector && !f.namespaceSelector &&
                                                             labelSelectorMatches(f.podSelector, x.tpl.labels))),
            `NetworkPolicy keeps ${x.where} out of PostgreSQL`);
    }
    p.add(rules.some((r) => r.from === null || r.from.some((f) => f.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"] === "keda")),
          "NetworkPolicy keeps KEDA (namespace keda) out of PostgreSQL");
    p.done();
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
  for (const t of ["overlays/single", "overlays/gpu"]) {
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

// --- 3c. The scale-out manifests against a real PostgreSQL ---------------------

await checkScaleoutWithPostgres();

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

// KEDA's queries, run by PostgreSQL 15 itself. For every job state (the
// proto's numbers) and device kind, the query runs over a one-row `jobs`
// table (a CTE of that name) and must count exactly the jobs its pool owes a
// worker: queued or running, for 'any' device or the pool's own. With
// --compressd, the migrate Job's command runs twice at once against an
// empty database (both must succeed: the advisory lock) and every query must
// then run against the real schema.
async function runMigrate(args, url, dir) {
  return new Promise((resolve) => {
    const child = spawn(compressdBin, args, {
      cwd: dir,
      env: { ...process.env, COMPRESSD_DATABASE: url, OPENBLAS_CORETYPE: process.env.OPENBLAS_CORETYPE ?? "Haswell" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => { output += d; });
    child.stderr.on("data", (d) => { output += d; });
    const timer = setTimeout(() => { output += "\n(killed after 120 s: it did not exit)"; child.kill("SIGKILL"); }, 120000);
    child.on("exit", (code, signal) => { clearTimeout(timer); resolve({ code, signal, output }); });
  });
}

async function checkScaleoutWithPostgres() {
  const queries = new Map();
  for (const t of SCALEOUT) {
    const objs = rendered[t] ?? [];
    for (const so of objs.filter((o) => o.kind === "ScaledObject")) {
      const target = findOpt(objs, so.spec.scaleTargetRef.kind ?? "Deployment", so.spec.scaleTargetRef.name);
      if (!target) continue;
      const pool = poolOf(objs, target);
      for (const trig of so.spec.triggers ?? []) {
        if (trig.type !== "postgresql" || !trig.metadata?.query) continue;
        const query = trig.metadata.query.trim().replace(/;\s*$/, "");
        const key = `${pool}\n${query}`;
        if (!queries.has(key)) queries.set(key, { pool, query, where: `${t} ScaledObject/${so.metadata.name}` });
      }
    }
  }
  let pg = null;
  await checkAsync("throwaway PostgreSQL for the KEDA queries", async () => {
    pg = await startPostgres();
    return `PostgreSQL ${pg.version}`;
  });
  if (!pg) return;
  try {
    for (const { pool, query, where } of queries.values()) {
      check(`KEDA query counts what the ${pool} pool must run (${where})`, () => {
        const combos = [];
        for (const [name, state] of Object.entries(JOB_STATES)) {
          for (const kind of DEVICE_KINDS) combos.push({ name, state, kind });
        }
        const sql = combos.map((x) =>
          `WITH jobs (state, device_kind) AS (VALUES (${x.state}::bigint, '${x.kind}'::text)) ${query};`).join("\n");
        let out;
        try {
          out = pg.psql(sql).trim().split("\n");
        } catch (e) {
          throw new Error(`PostgreSQL rejects it (only the columns state and device_kind may be used): ${e.stderr || e.message}`);
        }
        const p = problems();
        combos.forEach((x, i) => {
          const counted = Number(out[i]) === 1;
          const owed = [JOB_STATES.QUEUED, JOB_STATES.RUNNING].includes(x.state) && (x.kind === "any" || x.kind === pool);
          const why = x.state === JOB_STATES.RUNNING && owed
            ? " (else KEDA scales the pool in under jobs that still run)"
            : "";
          p.add(counted === owed, `a ${x.name} job for device '${x.kind}' is ${counted ? "" : "not "}counted${why}`);
        });
        p.done();
        return `${combos.length} state/device combinations`;
      });
    }
    if (compressdBin) {
      await checkAsync("compressd migrate (the Job's command, twice at once) and the KEDA queries on its schema", async () => {
        const objs = rendered["overlays/scaleout"];
        const migrate = objs && compressdContainers(objs).find((x) => x.role === "migrate");
        assert(migrate, "overlays/scaleout has no migrate Job");
        const args = [...(migrate.c.command ?? []).slice(1), ...(migrate.c.args ?? [])];
        pg.psql("CREATE DATABASE compressd;");
        const url = pg.url.replace(/\/postgres$/, "/compressd");
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "compressd-deploy-migrate-"));
        try {
          const results = await Promise.all([runMigrate(args, url, dir), runMigrate(args, url, dir)]);
          for (const r of results) {
            assert(r.code === 0, `compressd ${args.join(" ")} exited ${r.code ?? r.signal}: ${r.output.trim()}`);
          }
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
        for (const { query, where } of queries.values()) {
          let out;
          try {
            out = pg.psql(`${query};`, "compressd").trim();
          } catch (e) {
            throw new Error(`${where}: the query fails on compressd's schema: ${e.stderr || e.message}`);
          }
          assert(out === "0", `${where}: the query gives ${out} on an empty queue`);
        }
        return `${queries.size} queries on the migrated schema`;
      });
    }
  } finally {
    pg.stop();
  }
}
