// A small Kustomize renderer for the subset deploy/ uses, so that CI renders
// every overlay without a cluster or a kustomize binary (Debian 12 ships
// none that is current). It applies what it supports for real and rejects
// anything else, so a kustomization that uses a feature it lacks fails here
// instead of rendering wrong:
//   resources (files and directories), namespace, labels (pairs, without
//   selectors or templates), images (name -> newName/newTag/digest), and
//   patches (strategic-merge patches from a path or inline, targeting the
//   resource named by the patch's kind and metadata.name; `$patch: delete`
//   on a whole resource removes it).
// validate.mjs also renders with `kubectl kustomize` where that exists and
// requires the same objects.
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";

const KUSTOMIZATION_FIELDS = new Set([
  "apiVersion", "kind", "namespace", "resources", "labels", "images", "patches",
]);

// Merge keys of the lists deploy/ patches (as in the Kubernetes API's
// strategic-merge metadata); any other list in a patch replaces the original.
const MERGE_KEYS = {
  containers: "name",
  initContainers: "name",
  ports: "containerPort",
  env: "name",
  envFrom: null,
  volumeMounts: "mountPath",
  volumes: "name",
  imagePullSecrets: "name",
};

export function readYamlDocs(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  const out = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
    const js = d.toJS();
    if (js !== null && js !== undefined) out.push(js);
  }
  return out;
}

export function resourceId(obj) {
  const ns = obj.metadata?.namespace ?? "";
  return `${obj.apiVersion}/${obj.kind}/${ns}/${obj.metadata?.name}`;
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function strategicMerge(original, patch, where) {
  if (!isObject(patch)) return structuredClone(patch);
  const out = isObject(original) ? structuredClone(original) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) throw new Error(`${where}: unsupported patch directive ${key}`);
    if (value === null) {
      delete out[key];
    } else if (Array.isArray(value)) {
      out[key] = mergeList(out[key], value, key, `${where}.${key}`);
    } else if (isObject(value)) {
      out[key] = strategicMerge(out[key], value, `${where}.${key}`);
    } else {
      out[key] = value;
    }
  }
  return out;
}

function mergeList(original, patch, key, where) {
  const mergeKey = MERGE_KEYS[key];
  if (!mergeKey || !Array.isArray(original)) return structuredClone(patch);
  const out = structuredClone(original);
  for (const item of patch) {
    if (!isObject(item) || !(mergeKey in item)) {
      throw new Error(`${where}: list items need their merge key "${mergeKey}"`);
    }
    const i = out.findIndex((o) => isObject(o) && o[mergeKey] === item[mergeKey]);
    if (i >= 0) out[i] = strategicMerge(out[i], item, `${where}[${item[mergeKey]}]`);
    else out.push(structuredClone(item));
  }
  return out;
}

function podSpecs(obj) {
  const specs = [];
  if (obj.kind === "Pod" && obj.spec) specs.push(obj.spec);
  if (obj.spec?.template?.spec) specs.push(obj.spec.template.spec);
  if (obj.spec?.jobTemplate?.spec?.template?.spec) specs.push(obj.spec.jobTemplate.spec.template.spec);
  return specs;
}

function applyImages(objects, images, where) {
  for (const img of images) {
    for (const field of Object.keys(img)) {
      if (!["name", "newName", "newTag", "digest"].includes(field)) {
        throw new Error(`${where}: images: unsupported field ${field}`);
      }
    }
    for (const obj of objects) {
      for (const spec of podSpecs(obj)) {
        for (const c of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
          const m = /^([^@]+?)(?::([^:/@]+))?(?:@(.+))?$/.exec(c.image ?? "");
          if (!m || m[1] !== img.name) continue;
          const name = img.newName ?? m[1];
          if (img.digest) c.image = `${name}@${img.digest}`;
          else if (img.newTag) c.image = `${name}:${img.newTag}`;
          else c.image = `${name}${m[2] ? `:${m[2]}` : ""}${m[3] ? `@${m[3]}` : ""}`;
        }
      }
    }
  }
}

// Renders the kustomization in `dir`; returns the resource objects.
export function render(dir) {
  const file = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
    .map((f) => path.join(dir, f))
    .find((f) => fs.existsSync(f));
  if (!file) throw new Error(`${dir}: no kustomization.yaml`);
  const [k] = readYamlDocs(file);
  for (const field of Object.keys(k)) {
    if (!KUSTOMIZATION_FIELDS.has(field)) {
      throw new Error(`${file}: field "${field}" is not supported by this renderer`);
    }
  }
  if (k.kind !== "Kustomization") throw new Error(`${file}: kind must be Kustomization`);

  let objects = [];
  for (const r of k.resources ?? []) {
    const p = path.join(dir, r);
    if (fs.statSync(p).isDirectory()) objects.push(...render(p));
    else objects.push(...readYamlDocs(p));
  }

  for (const patch of k.patches ?? []) {
    for (const field of Object.keys(patch)) {
      if (!["path", "patch"].includes(field)) {
        throw new Error(`${file}: patches: unsupported field ${field} (targets come from the patch)`);
      }
    }
    const docs = patch.path
      ? readYamlDocs(path.join(dir, patch.path))
      : YAML.parseAllDocuments(patch.patch).map((d) => d.toJS());
    for (const p of docs) {
      const where = `${patch.path ?? "inline patch"} ${p.kind}/${p.metadata?.name}`;
      const matches = objects.filter(
        (o) => o.kind === p.kind && o.metadata?.name === p.metadata?.name &&
               o.apiVersion.split("/")[0] === p.apiVersion.split("/")[0]);
      if (matches.length !== 1) {
        throw new Error(`${file}: ${where}: matches ${matches.length} resources, want 1`);
      }
      if (p.$patch === "delete") {
        objects = objects.filter((o) => o !== matches[0]);
        continue;
      }
      const merged = strategicMerge(matches[0], p, where);
      objects[objects.indexOf(matches[0])] = merged;
    }
  }

  for (const entry of k.labels ?? []) {
    for (const field of Object.keys(entry)) {
      if (field === "pairs") continue;
      if ((field === "includeSelectors" || field === "includeTemplates") && entry[field] === false) continue;
      throw new Error(`${file}: labels: ${field}: only plain metadata labels are supported`);
    }
    for (const obj of objects) {
      obj.metadata = obj.metadata ?? {};
      obj.metadata.labels = { ...(obj.metadata.labels ?? {}), ...entry.pairs };
    }
  }

  if (k.images) applyImages(objects, k.images, file);

  if (k.namespace) {
    for (const obj of objects) {
      if (["Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"].includes(obj.kind)) {
        continue;
      }
      obj.metadata.namespace = k.namespace;
    }
  }
  return objects;
}
