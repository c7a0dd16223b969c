// Helpers over rendered objects for validate.mjs: pod templates, label
// selectors, the environment a container really gets (envFrom + env, with
// the ConfigMap and Secret references resolved), network policy ingress.
// Everything here reads the rendered output only; nothing talks to a cluster.

export const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]);

export function findOpt(objs, kind, name) {
  return objs.find((x) => x.kind === kind && x.metadata?.name === name);
}

export function find(objs, kind, name) {
  const o = findOpt(objs, kind, name);
  if (!o) throw new Error(`no ${kind} ${name}`);
  return o;
}

// The pod templates of the workloads, with where they come from.
// (A CronJob's is under spec.jobTemplate.spec.template.)
export function podTemplates(objs) {
  const templateOf = (o) => (o.kind === "CronJob" ? o.spec?.jobTemplate?.spec?.template : o.spec?.template);
  return objs
    .filter((o) => (WORKLOAD_KINDS.has(o.kind) || o.kind === "CronJob") && templateOf(o))
    .map((o) => ({
      owner: o,
      name: `${o.kind}/${o.metadata.name}`,
      labels: templateOf(o).metadata?.labels ?? {},
      spec: templateOf(o).spec,
    }));
}

// A map selector (Service.spec.selector): every pair matches; empty selects nothing.
export function selects(selector, labels) {
  return Object.keys(selector ?? {}).length > 0 &&
         Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

// A metav1.LabelSelector (matchLabels + matchExpressions); empty selects everything.
export function labelSelectorMatches(sel, labels) {
  labels = labels ?? {};
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel?.matchExpressions ?? []) {
    const has = e.key in labels;
    if (e.operator === "In" && !(has && e.values.includes(labels[e.key]))) return false;
    if (e.operator === "NotIn" && has && e.values.includes(labels[e.key])) return false;
    if (e.operator === "Exists" && !has) return false;
    if (e.operator === "DoesNotExist" && has) return false;
  }
  return true;
}

export function secretKeys(secret) {
  return Object.keys({ ...(secret?.data ?? {}), ...(secret?.stringData ?? {}) });
}

export function secretValue(secret, key) {
  if (secret?.stringData && key in secret.stringData) return String(secret.stringData[key]);
  if (secret?.data && key in secret.data) return Buffer.from(secret.data[key], "base64").toString("utf8");
  return undefined;
}

// The environment of `container`: name -> {value} for literals and ConfigMap
// values, {secret, key} for Secret references, {field} for the downward API.
// Later envFrom sources win over earlier ones and env over envFrom, as in
// the kubelet. `problems` lists references to objects or keys that the
// rendered output does not have.
export function effectiveEnv(objs, container) {
  const env = {};
  const problems = [];
  for (const src of container.envFrom ?? []) {
    const prefix = src.prefix ?? "";
    if (src.configMapRef) {
      const cm = findOpt(objs, "ConfigMap", src.configMapRef.name);
      if (!cm) {
        if (!src.configMapRef.optional) problems.push(`envFrom: no ConfigMap ${src.configMapRef.name}`);
        continue;
      }
      for (const [k, v] of Object.entries(cm.data ?? {})) {
        env[prefix + k] = { value: String(v), from: `ConfigMap ${cm.metadata.name}` };
      }
    } else if (src.secretRef) {
      const s = findOpt(objs, "Secret", src.secretRef.name);
      if (!s) {
        if (!src.secretRef.optional) problems.push(`envFrom: no Secret ${src.secretRef.name}`);
        continue;
      }
      for (const k of secretKeys(s)) env[prefix + k] = { secret: s.metadata.name, key: k };
    }
  }
  for (const e of container.env ?? []) {
    const from = e.valueFrom;
    if (!from) {
      env[e.name] = { value: e.value ?? "" };
    } else if (from.secretKeyRef) {
      const { name, key, optional } = from.secretKeyRef;
      const s = findOpt(objs, "Secret", name);
      if (!s && !optional) problems.push(`env ${e.name}: no Secret ${name}`);
      else if (s && !secretKeys(s).includes(key) && !optional) {
        problems.push(`env ${e.name}: Secret ${name} has no key ${key}`);
      }
      env[e.name] = { secret: name, key };
    } else if (from.configMapKeyRef) {
      const { name, key, optional } = from.configMapKeyRef;
      const cm = findOpt(objs, "ConfigMap", name);
      if (!cm && !optional) problems.push(`env ${e.name}: no ConfigMap ${name}`);
      else if (cm && !(key in (cm.data ?? {})) && !optional) {
        problems.push(`env ${e.name}: ConfigMap ${name} has no key ${key}`);
      }
      env[e.name] = { value: cm?.data?.[key], from: `ConfigMap ${name}` };
    } else if (from.fieldRef) {
      env[e.name] = { field: from.fieldRef.fieldPath };
    } else if (from.resourceFieldRef) {
      env[e.name] = { field: from.resourceFieldRef.resource };
    } else {
      problems.push(`env ${e.name}: unsupported valueFrom`);
    }
  }
  return { env, problems };
}

// The literal value of an environment variable, or the Secret value it
// refers to (placeholders included), or undefined.
export function envValue(objs, env, name) {
  const e = env[name];
  if (!e) return undefined;
  if (e.secret) return secretValue(findOpt(objs, "Secret", e.secret), e.key);
  return e.value;
}

// A container port by name or number -> number; undefined if the pod has none.
export function containerPort(spec, port) {
  for (const c of spec.containers ?? []) {
    for (const p of c.ports ?? []) {
      if (p.name === port || p.containerPort === port) return p.containerPort;
    }
  }
  return undefined;
}

// What ingress a pod template gets from the NetworkPolicies that select it:
// {isolated: bool, rules: [{ports: [number] | null (all), from: [...] | null (anywhere)}]}.
export function ingressOf(objs, tpl) {
  const ns = tpl.owner.metadata.namespace;
  const policies = objs.filter((o) => o.kind === "NetworkPolicy" && o.metadata.namespace === ns &&
    labelSelectorMatches(o.spec.podSelector, tpl.labels) &&
    (o.spec.policyTypes ?? ["Ingress"]).includes("Ingress"));
  const rules = [];
  for (const p of policies) {
    for (const r of p.spec.ingress ?? []) {
      const ports = r.ports?.length ? r.ports.map((x) => containerPort(tpl.spec, x.port) ?? x.port) : null;
      rules.push({ ports, from: r.from?.length ? r.from : null, policy: p.metadata.name });
    }
  }
  return { isolated: policies.length > 0, rules, policies: policies.map((p) => p.metadata.name) };
}

// Egress a pod template gets: {isolated, rules: [{ports: [number] | null, to}]}.
export function egressOf(objs, tpl) {
  const ns = tpl.owner.metadata.namespace;
  const policies = objs.filter((o) => o.kind === "NetworkPolicy" && o.metadata.namespace === ns &&
    labelSelectorMatches(o.spec.podSelector, tpl.labels) &&
    (o.spec.policyTypes ?? []).includes("Egress"));
  const rules = [];
  for (const p of policies) {
    for (const r of p.spec.egress ?? []) {
      rules.push({ ports: r.ports?.length ? r.ports.map((x) => x.port) : null, to: r.to?.length ? r.to : null });
    }
  }
  return { isolated: policies.length > 0, rules };
}

export function egressAllows(egress, port) {
  if (!egress.isolated) return true;
  return egress.rules.some((r) => r.ports === null || r.ports.includes(port));
}
