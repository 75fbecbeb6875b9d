#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests of the saga coordinator (run by scripts/k8s-validate.sh).

    check_manifests.py [--k8s-version 1.30.0] [--schemas k8s/schemas] [--docs docs/DEPLOYMENT.md]
                       [--namespace-agnostic] [--label NAME] [--crd-schemas DIR]…
                       [--metrics-inventory SCRAPE] [--promtool PATH] [--operations docs/OPERATIONS.md]
                       [--kustomize PATH --repo-root DIR] FILE...

All objects of all FILEs are checked together, so cross-references between them (a Service and
its Deployment, a KafkaUser's ACLs and the services' topic prefix) are checked too.

1. Schema, every object:
   - built-in kinds: kubernetes-validate, strict (unknown fields are errors), for --k8s-version;
   - custom resources: the JSON Schema <kind>-<group>-<version>.json in --schemas (Strimzi), or in
     a --crd-schemas directory (converted from the upstream CRDs of the Prometheus Operator,
     Argo CD and Istio by crd_schemas.py);
   - anything else is an error: an unknown kind is never silently skipped.
2. Consistency and policy (see the check_* functions): selectors match pod labels, Service and
   probe ports exist on the containers, autoscaler and disruption-budget targets exist, no Secret
   values, hardened pods, the services' settings are ones they accept, listen ports match the
   container ports, TLS and SASL settings are complete and their files mounted, the Kafka topics
   and ACLs match who reads and writes what, and every setting used is documented.
3. Operations (when such objects are present):
   - PrometheusRule: every alert has a severity (critical, warning, info), summary, description and
     a runbook_url whose anchor is a heading of --operations; its expressions use only metrics and
     labels of --metrics-inventory (check_metrics.py); `promtool check rules` accepts it;
   - Grafana dashboard ConfigMaps (label grafana_dashboard: "1"): valid JSON with uid, title and
     panels, unique panel ids, expressions checked like the alerts';
   - ServiceMonitor: selects Services of the manifests, scrapes a port of each, which the pods'
     NetworkPolicy admits from Prometheus' namespace; https with certificates under STRICT mTLS;
   - Istio: namespace-wide STRICT PeerAuthentication and nothing weaker; every workload covered by
     an ALLOW AuthorizationPolicy; no rule admits a source or port its NetworkPolicy does not; no
     HTTP conditions on a port carrying the service's own TLS, which its Service declares as
     appProtocol tls; sidecar injection on, but not for Jobs;
   - Argo CD: each Application's project, repository and destination are admitted by its
     AppProject, and so is every object its source renders to (rendered the way Argo CD does,
     with --kustomize and --repo-root); Jobs are hooks when self-heal is on.

Exit status 0 when everything passes, 1 otherwise. Errors are printed as `ERROR <object>: <why>`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema
import yaml

try:
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
except ImportError:  # pragma: no cover - the shell script installs it
    sys.exit("kubernetes-validate is not installed (scripts/k8s-validate.sh installs it)")

# kubernetes-validate parses its schema files (the definitions are over 1 MB) again for every
# object; the files never change during a run, so parse each once.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)

# --------------------------------------------------------------------------------------------
# What the services are and what they accept.

SERVICES = ("orchestrator", "user-service", "post-service")
IMAGE = "saga-coordinator"

# Settings each binary accepts: nested like the Rust settings structs (serde deny_unknown_fields),
# `None` for a leaf, "*" for a map with free keys. Environment names are APP_ + path joined by "__".
_DB = {"url": None, "max_connections": None, "acquire_timeout_ms": None, "create_if_missing": None}
_KAFKA = {
    "brokers": None, "topic_prefix": None, "create_topics": None, "partitions": None,
    "replication": None, "max_batch": None, "client": "*", "consumer": "*", "producer": "*",
    "unready_after_ms": None, "instance_id": None,
    "security": {"protocol": None, "sasl_mechanism": None, "username": None, "password": None,
                 "ca_file": None},
}
_RELAY = {"enabled": None, "batch_size": None, "poll_interval_ms": None, "max_in_flight": None}
_HTTP = {"listen": None, "tls": {"cert_file": None, "key_file": None}}
_COMMON = {"database": _DB, "kafka": _KAFKA, "relay": _RELAY, "http": _HTTP, "log_format": None}
SETTINGS = {
    "orchestrator": {
        **_COMMON,
        "grpc": {"listen": None, "max_payload_bytes": None,
                 "tls": {"cert_file": None, "key_file": None, "client_ca_file": None}},
        "replies": {"enabled": None, "topic": None, "group": None},
        "timers": {"enabled": None, "interval_ms": None, "batch_size": None},
        "catalog_path": None,
        "auth": {"operators": "*", "readers": "*", "protect_reads": None},
        "operator": {"replay_rate_default": None, "replay_rate_max": None,
                     "replay_limit_default": None, "replay_limit_max": None},
        "audit": {"participants": "*", "interval_secs": None, "window_secs": None,
                  "unfinished_after_secs": None, "page_size": None, "request_timeout_ms": None,
                  "cross_checks": "*", "settle_ms": None},
    },
    "user-service": {**_COMMON, "commands_topic": None, "reply_topic": None, "group": None,
                     "rules": {"default_post_quota": None}},
    "post-service": {**_COMMON, "commands_topic": None, "reply_topic": None, "group": None,
                     "rules": {}},
}
# Settings read by the runtime itself, not the APP_ loader (any value accepted).
PASSTHROUGH = re.compile(r"^(RUST_LOG|RUST_BACKTRACE|OTEL_[A-Z0-9_]+|POD_NAME|POD_NAMESPACE|APP_CONFIG_FILE)$")

KAFKA_PROTOCOLS = {"plaintext", "ssl", "sasl_plaintext", "sasl_ssl"}
SASL_MECHANISMS = {"SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"}

# Who reads and writes what (logical names; APP_KAFKA__TOPIC_PREFIX is prepended to all of them).
TOPICS = ("user.commands", "post.commands", "saga.replies",
          "user.commands.dlq", "post.commands.dlq", "saga.replies.dlq")
KAFKA_ACCESS = {
    "orchestrator": {"read": {"saga.replies"},
                     "write": {"user.commands", "post.commands", "saga.replies.dlq"},
                     "group": "saga-orchestrator"},
    "user-service": {"read": {"user.commands"}, "write": {"saga.replies", "user.commands.dlq"},
                     "group": "user-service"},
    "post-service": {"read": {"post.commands"}, "write": {"saga.replies", "post.commands.dlq"},
                     "group": "post-service"},
}

SECRET_LOOKING = re.compile(r"(PASSWORD|TOKEN|SECRET|PRIVATE|__OPERATORS__|__READERS__|DATABASE__URL)", re.I)
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
COMMON_LABELS = ("app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")

# --------------------------------------------------------------------------------------------


class Obj:
    def __init__(self, doc: dict, source: str):
        self.doc = doc
        self.source = source
        self.kind = doc.get("kind") if isinstance(doc, dict) else None
        self.api = doc.get("apiVersion") if isinstance(doc, dict) else None
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        self.name = meta.get("name")
        self.namespace = meta.get("namespace")
        self.labels = meta.get("labels") or {}
        self.schema_ok = False
        self.validator = "-"

    def __str__(self):
        ns = f" ({self.namespace})" if self.namespace else ""
        return f"{self.kind}/{self.name}{ns}"


class Report:
    def __init__(self):
        self.errors: list[str] = []
        self.notes: list[str] = []  # what was checked beyond the objects themselves (not --quiet)

    def error(self, obj, message: str):
        where = str(obj) if obj is not None else "manifests"
        self.errors.append(f"{where}: {message}")


def load(files: list[str]) -> list[Obj]:
    objs = []
    for f in files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if doc is None:
                    continue
                objs.append(Obj(doc, f))
    return objs


# ---------------------------------------------------------------------------- schema validation

def _path(err) -> str:
    out = ""
    for p in err.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def _short(msg: str, limit: int = 240) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def _builtin_all_errors(doc: dict, version: str) -> list[str]:
    """Every strict-schema error, with the schema kubernetes-validate just used (for a complete
    report; kubernetes-validate itself stops at the first)."""
    from referencing import Registry, Resource

    versions = [v for v in kv_utils.all_versions()
                if kv_utils.major_minor(v) <= kv_utils.major_minor(version)]
    schema_dir = f"v{versions[-1]}-local-strict"
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    schema = kv_utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/{doc['kind'].lower()}-{api}.json", version)
    defs = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return [f"{_path(e)}: {_short(e.message)}" for e in validator.iter_errors(doc)]


def check_schema(obj: Obj, version: str, schemas: Path, rep: Report, crd_dirs: tuple = ()):
    doc = obj.doc
    if not isinstance(doc, dict) or not obj.api or not obj.kind:
        rep.error(obj, "not a Kubernetes object (apiVersion and kind are required)")
        return
    if not obj.name:
        rep.error(obj, "metadata.name is missing")
    group, _, ver = obj.api.rpartition("/")
    custom = None
    for d in (schemas, *crd_dirs) if group else ():
        if (d / f"{obj.kind.lower()}-{group}-{ver}.json").exists():
            custom = d / f"{obj.kind.lower()}-{group}-{ver}.json"
            break
    if custom is not None:
        # k8s/schemas is hand-written for this project; the others are converted from the
        # upstream CRDs (k8s/tools/crd_schemas.py, fetched pinned by scripts/k8s-validate.sh).
        obj.validator = f"{schemas.name}/{custom.name}" if custom.parent == schemas else f"upstream CRD {custom.name}"
        schema = json.loads(custom.read_text())
        errs = sorted(jsonschema.validators.Draft202012Validator(schema).iter_errors(doc),
                      key=lambda e: list(map(str, e.absolute_path)))
        for e in errs:
            rep.error(obj, f"schema ({custom.name}): {_path(e)}: {_short(e.message)}")
        obj.schema_ok = not errs
        return
    obj.validator = f"kubernetes-validate --strict ({version})"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        obj.schema_ok = True
    except kv_utils.SchemaNotFoundError:
        obj.validator = "none"
        rep.error(obj, f"no schema for kind {obj.kind} ({obj.api}): neither a built-in Kubernetes "
                       f"{version} kind nor a custom schema in {schemas} or an upstream CRD schema — unknown kinds "
                       "are not allowed")
    except kv_utils.ValidationError as first:
        try:
            errs = _builtin_all_errors(doc, version)
        except Exception:  # the full listing is best effort; the verdict stands
            errs = []
        for e in errs or [f"{'.'.join(map(str, first.path)) or '(root)'}: {_short(first.message)}"]:
            rep.error(obj, f"schema (kubernetes-validate --strict {version}): {e}")
    except kv_utils.VersionNotSupportedError:
        sys.exit(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for {version}")


# --------------------------------------------------------------------------------- helpers

def pod_spec(obj: Obj) -> dict | None:
    spec = obj.doc.get("spec") or {}
    if obj.kind in WORKLOADS:
        return ((spec.get("template") or {}).get("spec")) or {}
    return None


def pod_labels(obj: Obj) -> dict:
    return (((obj.doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels / matchExpressions, or a plain map for Services)."""
    if not selector:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        for k, v in (selector.get("matchLabels") or {}).items():
            if labels.get(k) != v:
                return False
        for ex in selector.get("matchExpressions") or []:
            k, op, vals = ex.get("key"), ex.get("operator"), ex.get("values") or []
            if op == "In" and labels.get(k) not in vals:
                return False
            if op == "NotIn" and labels.get(k) in vals:
                return False
            if op == "Exists" and k not in labels:
                return False
            if op == "DoesNotExist" and k in labels:
                return False
        return True
    return all(labels.get(k) == v for k, v in selector.items())


def service_of(container: dict) -> tuple[str | None, bool]:
    """(saga service name, is it the migrate command) for a container running our image."""
    image = str(container.get("image", ""))
    if IMAGE not in image.rsplit("/", 1)[-1]:
        return None, False
    cmd = list(container.get("command") or []) + list(container.get("args") or [])
    if not cmd:
        return "orchestrator", False  # the image's CMD
    binary = os.path.basename(cmd[0])
    return (binary if binary in SERVICES else None), ("migrate" in cmd[1:])


class Env:
    """A container's environment: name → ("value", v) | ("configmap", cm, key, v) |
    ("secret", name, key) | ("field", path); plus Secrets pulled in whole by envFrom."""

    def __init__(self, container: dict, configmaps: dict, rep: Report, obj: Obj):
        self.vars: dict[str, tuple] = {}
        self.secret_sources: list[str] = []
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                name = src["configMapRef"].get("name")
                cm = configmaps.get(name)
                if cm is None:
                    if not src["configMapRef"].get("optional"):
                        rep.error(obj, f"container {container.get('name')}: envFrom ConfigMap {name} is not in the manifests")
                    continue
                for k, v in ((cm.doc.get("data") or {}).items()):
                    self.vars[prefix + k] = ("configmap", name, k, str(v))
            if "secretRef" in src:
                self.secret_sources.append(src["secretRef"].get("name"))
        for e in container.get("env") or []:
            name = e.get("name")
            if "value" in e:
                self.vars[name] = ("value", str(e["value"]))
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf:
                    self.vars[name] = ("secret", vf["secretKeyRef"].get("name"), vf["secretKeyRef"].get("key"))
                elif "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    cm = configmaps.get(ref.get("name"))
                    data = (cm.doc.get("data") or {}) if cm else {}
                    if cm is None or ref.get("key") not in data:
                        if not ref.get("optional"):
                            rep.error(obj, f"env {name}: ConfigMap key {ref.get('name')}/{ref.get('key')} is not in the manifests")
                        continue
                    self.vars[name] = ("configmap", ref["name"], ref["key"], str(data[ref["key"]]))
                elif "fieldRef" in vf:
                    self.vars[name] = ("field", vf["fieldRef"].get("fieldPath"))
                else:
                    self.vars[name] = ("other",)
            else:
                self.vars[name] = ("value", "")

    def value(self, name: str) -> str | None:
        v = self.vars.get(name)
        if v is None:
            return None
        if v[0] == "value":
            return v[1]
        if v[0] == "configmap":
            return v[3]
        return None

    def has(self, name: str) -> bool:
        return name in self.vars


def setting_error(service: str, env_name: str) -> str | None:
    """Why `service` would reject the environment variable, or None if it accepts it."""
    if PASSTHROUGH.match(env_name) or not env_name.startswith("APP_"):
        return None
    path = env_name[4:].lower().split("__")
    node = SETTINGS[service]
    for i, part in enumerate(path):
        if node == "*":
            return None if i == len(path) - 1 else f"{env_name}: map values are plain settings"
        if not isinstance(node, dict) or part not in node:
            where = "__".join(p.upper() for p in path[:i]) or "top level"
            return f"{env_name}: `{part}` is not a setting of the {service} ({where}); it rejects unknown settings"
        node = node[part]
    if node == "*" or isinstance(node, dict):
        return f"{env_name}: names a group of settings, not one setting"
    return None


# --------------------------------------------------------------------------------- checks

def check_general(objs: list[Obj], rep: Report, namespace_agnostic: bool):
    seen = Counter((o.kind, o.namespace, o.name) for o in objs)
    for (kind, ns, name), n in seen.items():
        if n > 1:
            rep.error(None, f"{kind}/{name} ({ns}) is defined {n} times")
    namespaces = {o.namespace for o in objs if o.kind != "Namespace" and o.kind}
    for o in objs:
        if o.kind == "Secret":
            rep.error(o, "Secret objects must not be committed (no secret values in manifests): "
                         "reference Secrets that are created out of band")
        if namespace_agnostic and (o.namespace or o.kind == "Namespace"):
            rep.error(o, "the base must be namespace-agnostic (no namespace, no Namespace object)")
        if o.kind == "Namespace" and o.name not in namespaces:
            rep.error(o, f"Namespace {o.name} is not the namespace of the other objects {sorted(map(str, namespaces))}")
        if o.kind and o.kind != "Namespace":
            missing = [label for label in COMMON_LABELS if label not in o.labels]
            if missing:
                rep.error(o, f"missing common labels {missing}")
        if o.kind == "ConfigMap":
            for k in (o.doc.get("data") or {}):
                if SECRET_LOOKING.search(k):
                    rep.error(o, f"ConfigMap key {k} looks secret: take it from a Secret (secretKeyRef)")


def check_workloads(objs: list[Obj], rep: Report, ctx: dict):
    configmaps = {o.name: o for o in objs if o.kind == "ConfigMap"}
    accounts = {o.name for o in objs if o.kind == "ServiceAccount"}
    hpa_targets = {(o.doc.get("spec") or {}).get("scaleTargetRef", {}).get("name")
                   for o in objs if o.kind == "HorizontalPodAutoscaler"}
    for o in objs:
        if o.kind not in WORKLOADS or not o.schema_ok:
            continue
        spec = pod_spec(o)
        labels = pod_labels(o)
        sel = (o.doc.get("spec") or {}).get("selector")
        if o.kind in LONG_RUNNING:
            if not sel or not selects(sel, labels):
                rep.error(o, f"spec.selector {sel} does not match the pod template labels {labels}")
            if o.kind == "Deployment" and o.name in hpa_targets and "replicas" in o.doc["spec"]:
                rep.error(o, "sets spec.replicas although a HorizontalPodAutoscaler owns the count "
                             "(every apply would reset it)")
        if spec.get("automountServiceAccountToken") is not False:
            rep.error(o, "automountServiceAccountToken must be false (the pods never call the API)")
        sa = spec.get("serviceAccountName")
        if sa and sa not in accounts:
            rep.error(o, f"serviceAccountName {sa} is not a ServiceAccount in the manifests")
        psc = spec.get("securityContext") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        mounted = set()
        for c in containers(spec):
            cname = c.get("name")
            where = f"container {cname}"
            csc = c.get("securityContext") or {}
            if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                rep.error(o, f"{where}: runAsNonRoot must be true")
            uid = csc.get("runAsUser", psc.get("runAsUser"))
            if uid == 0:
                rep.error(o, f"{where}: runAsUser 0 (root)")
            if csc.get("allowPrivilegeEscalation") is not False:
                rep.error(o, f"{where}: allowPrivilegeEscalation must be false")
            if csc.get("readOnlyRootFilesystem") is not True:
                rep.error(o, f"{where}: readOnlyRootFilesystem must be true")
            if csc.get("privileged"):
                rep.error(o, f"{where}: privileged")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                rep.error(o, f"{where}: capabilities.drop must include ALL")
            if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                rep.error(o, f"{where}: seccompProfile must be RuntimeDefault")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        rep.error(o, f"{where}: resources.{part}.{r} is not set")
            image = str(c.get("image", ""))
            last = image.rsplit("/", 1)[-1]
            if image.endswith(":latest"):
                rep.error(o, f"{where}: image {image} uses the tag latest")
            elif "@" not in image and ":" not in last and IMAGE not in last:
                # our own image gets its tag from the overlay (kustomize images:)
                rep.error(o, f"{where}: image {image} has no tag")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            numbers = set(ports.values())
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                pr = c.get(probe)
                if pr and "httpGet" in pr:
                    port = pr["httpGet"].get("port")
                    if (isinstance(port, str) and port not in ports) or (isinstance(port, int) and port not in numbers):
                        rep.error(o, f"{where}: {probe} port {port!r} is not a port of the container {sorted(map(str, ports))}")
            if o.kind in LONG_RUNNING and c in (spec.get("containers") or []):
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        rep.error(o, f"{where}: no {probe}")
            mount_paths = []
            for m in c.get("volumeMounts") or []:
                mounted.add(m.get("name"))
                mount_paths.append(m.get("mountPath", ""))
                if m.get("name") not in volumes and not any(
                        t.get("metadata", {}).get("name") == m.get("name")
                        for t in (o.doc.get("spec") or {}).get("volumeClaimTemplates") or []):
                    rep.error(o, f"{where}: volumeMount {m.get('name')} has no volume")
            env = Env(c, configmaps, rep, o)
            for name, v in env.vars.items():
                if v[0] == "value" and SECRET_LOOKING.search(name) and v[1]:
                    rep.error(o, f"{where}: {name} is a literal value; take it from a Secret (secretKeyRef)")
                if v[0] == "secret":
                    ctx["secrets"][v[1]].add(f"{v[2]} → {name}")
                ctx["env_names"].add(name)
            for s in env.secret_sources:
                ctx["secrets"][s].add("every key, as environment variables (envFrom)")
            service, migrate = service_of(c)
            if service:
                check_saga_container(o, c, service, migrate, env, mount_paths, ports, spec, rep, ctx)
        for name, v in volumes.items():
            if name not in mounted:
                rep.error(o, f"volume {name} is not mounted by any container")
            if "secret" in v:
                ctx["secrets"][v["secret"].get("secretName")].add("(volume)")
            if "configMap" in v and v["configMap"].get("name") not in configmaps and not v["configMap"].get("optional"):
                rep.error(o, f"volume {name}: ConfigMap {v['configMap'].get('name')} is not in the manifests")
        if o.kind == "StatefulSet":
            svc = (o.doc.get("spec") or {}).get("serviceName")
            if svc not in {s.name for s in objs if s.kind == "Service"}:
                rep.error(o, f"serviceName {svc} is not a Service in the manifests")


def check_saga_container(o, c, service, migrate, env: Env, mount_paths, ports, spec, rep, ctx):
    where = f"container {c.get('name')} ({service}{' migrate' if migrate else ''})"
    for name in env.vars:
        why = setting_error(service, name)
        if why:
            rep.error(o, f"{where}: {why}")
    for name, v in env.vars.items():
        # Files named by settings must be inside a mounted volume.
        if name.endswith("_FILE") and name.startswith("APP_"):
            path = env.value(name)
            if path and not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mount_paths):
                rep.error(o, f"{where}: {name}={path} is not inside any volumeMount {mount_paths}")
    url = env.vars.get("APP_DATABASE__URL")
    if not url or url[0] != "secret":
        rep.error(o, f"{where}: APP_DATABASE__URL must come from a Secret (secretKeyRef)")
    if env.value("APP_DATABASE__CREATE_IF_MISSING") != "false":
        rep.error(o, f"{where}: APP_DATABASE__CREATE_IF_MISSING must be false (databases are provisioned, "
                     "and the default true needs rights on the `postgres` database)")
    if migrate:
        return
    ctx["services"][service] = (o, env)
    # Listen addresses: reachable from outside the pod, on a declared container port.
    listens = [("APP_HTTP__LISTEN", "http")] + ([("APP_GRPC__LISTEN", "grpc")] if service == "orchestrator" else [])
    for var, _ in listens:
        val = env.value(var)
        if not val:
            rep.error(o, f"{where}: {var} is not set (the default listens on 127.0.0.1 only)")
            continue
        host, _, port = val.rpartition(":")
        if host not in ("0.0.0.0", "[::]"):
            rep.error(o, f"{where}: {var}={val} is not reachable from outside the pod (use 0.0.0.0)")
        if not port.isdigit() or int(port) not in set(ports.values()):
            rep.error(o, f"{where}: {var}={val} is not one of the container ports {sorted(ports.values())}")
    if env.value("APP_KAFKA__CREATE_TOPICS") != "false":
        rep.error(o, f"{where}: APP_KAFKA__CREATE_TOPICS must be false (topics come from KafkaTopic resources)")
    if env.value("APP_LOG_FORMAT") != "json":
        rep.error(o, f"{where}: APP_LOG_FORMAT should be json in a cluster")
    # Kafka security: complete and coherent.
    proto = env.value("APP_KAFKA__SECURITY__PROTOCOL") or "plaintext"
    sasl = [k for k in ("APP_KAFKA__SECURITY__SASL_MECHANISM", "APP_KAFKA__SECURITY__USERNAME",
                        "APP_KAFKA__SECURITY__PASSWORD") if env.has(k)]
    if proto not in KAFKA_PROTOCOLS:
        rep.error(o, f"{where}: APP_KAFKA__SECURITY__PROTOCOL={proto} is not one of {sorted(KAFKA_PROTOCOLS)}")
    if proto.startswith("sasl_"):
        mech = env.value("APP_KAFKA__SECURITY__SASL_MECHANISM")
        if mech not in SASL_MECHANISMS:
            rep.error(o, f"{where}: APP_KAFKA__SECURITY__SASL_MECHANISM={mech} is not one of {sorted(SASL_MECHANISMS)}")
        if not env.value("APP_KAFKA__SECURITY__USERNAME"):
            rep.error(o, f"{where}: {proto} without APP_KAFKA__SECURITY__USERNAME")
        pw = env.vars.get("APP_KAFKA__SECURITY__PASSWORD")
        if not pw or pw[0] != "secret":
            rep.error(o, f"{where}: {proto} needs APP_KAFKA__SECURITY__PASSWORD from a Secret")
    elif sasl:
        rep.error(o, f"{where}: SASL settings {sasl} with protocol {proto}")
    if proto in ("ssl", "sasl_ssl") and not env.value("APP_KAFKA__SECURITY__CA_FILE"):
        rep.error(o, f"{where}: {proto} without APP_KAFKA__SECURITY__CA_FILE (the cluster CA)")
    if proto in ("plaintext", "sasl_plaintext") and env.has("APP_KAFKA__SECURITY__CA_FILE"):
        rep.error(o, f"{where}: APP_KAFKA__SECURITY__CA_FILE with protocol {proto} (no TLS)")
    # TLS on the listeners: certificate and key together; HTTPS probes exactly when HTTP has TLS.
    for prefix in ("APP_GRPC__TLS__", "APP_HTTP__TLS__"):
        have = {k for k in ("CERT_FILE", "KEY_FILE") if env.has(prefix + k)}
        if len(have) == 1:
            rep.error(o, f"{where}: {prefix}{have.pop()} without its pair")
    if env.has("APP_GRPC__TLS__CLIENT_CA_FILE") and not env.has("APP_GRPC__TLS__CERT_FILE"):
        rep.error(o, f"{where}: APP_GRPC__TLS__CLIENT_CA_FILE (mTLS) needs APP_GRPC__TLS__CERT_FILE/KEY_FILE")
    want = "HTTPS" if env.has("APP_HTTP__TLS__CERT_FILE") else "HTTP"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        pr = c.get(probe)
        if not pr or "httpGet" not in pr:
            rep.error(o, f"{where}: {probe} must be an httpGet probe of /healthz or /readyz")
            continue
        scheme = pr["httpGet"].get("scheme", "HTTP")
        if scheme != want:
            rep.error(o, f"{where}: {probe} uses {scheme} but the HTTP port serves {want}")
        path = pr["httpGet"].get("path")
        expect = "/readyz" if probe == "readinessProbe" else "/healthz"
        if path != expect:
            rep.error(o, f"{where}: {probe} path {path} (expected {expect})")
    if o.kind == "Deployment":
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < 30:
            rep.error(o, f"terminationGracePeriodSeconds {grace}: shutdown drains ≤ 15 s and flushes spans ≤ 5 s; use 30 or more")


def check_services(objs: list[Obj], rep: Report):
    workloads = [o for o in objs if o.kind in WORKLOADS and o.schema_ok]
    for s in objs:
        if s.kind != "Service" or not s.schema_ok:
            continue
        sel = (s.doc.get("spec") or {}).get("selector") or {}
        if not sel:
            rep.error(s, "has no selector")
            continue
        matched = [w for w in workloads if selects(sel, pod_labels(w))]
        if not [w for w in matched if w.kind in LONG_RUNNING]:
            rep.error(s, f"selector {sel} matches no Deployment/StatefulSet pods")
        for w in matched:
            if w.kind == "Job":
                rep.error(s, f"selector {sel} also matches the pods of Job/{w.name}")
        for w in matched:
            cports = [p for c in (pod_spec(w).get("containers") or []) for p in c.get("ports") or []]
            names = {p.get("name") for p in cports}
            numbers = {p.get("containerPort") for p in cports}
            for p in (s.doc["spec"].get("ports") or []):
                target = p.get("targetPort", p.get("port"))
                if (isinstance(target, str) and target not in names) or (isinstance(target, int) and target not in numbers):
                    rep.error(s, f"port {p.get('name')} targets {target!r}, which {w.kind}/{w.name} does not expose "
                                 f"(ports {sorted(map(str, names))} / {sorted(numbers)})")


def check_autoscaling(objs: list[Obj], rep: Report):
    by_name = {(o.kind, o.name): o for o in objs}
    hpa_min = {}
    for h in objs:
        if h.kind != "HorizontalPodAutoscaler":
            continue
        spec = h.doc.get("spec") or {}
        if not h.schema_ok:
            # Its schema errors are reported already; still note whom it scales, so the
            # disruption-budget check below does not add a second, derived error.
            name = (spec.get("scaleTargetRef") or {}).get("name")
            lo = spec.get("minReplicas", 1)
            hpa_min[name] = (lo if isinstance(lo, int) else 1 << 30, None)
            continue
        ref = spec.get("scaleTargetRef") or {}
        target = by_name.get((ref.get("kind"), ref.get("name")))
        if target is None:
            rep.error(h, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not in the manifests")
            continue
        lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
        if hi is not None and lo > hi:
            rep.error(h, f"minReplicas {lo} > maxReplicas {hi}")
        hpa_min[target.name] = (lo, hi)
        for m in spec.get("metrics") or []:
            res = (m.get("resource") or {}).get("name")
            if m.get("type") == "Resource":
                for c in pod_spec(target).get("containers") or []:
                    if res not in ((c.get("resources") or {}).get("requests") or {}):
                        rep.error(h, f"scales on {res} utilisation but {target} container {c.get('name')} requests no {res}")
    for p in objs:
        if p.kind != "PodDisruptionBudget" or not p.schema_ok:
            continue
        spec = p.doc["spec"]
        if ("minAvailable" in spec) == ("maxUnavailable" in spec):
            rep.error(p, "set exactly one of minAvailable and maxUnavailable")
        matched = [w for w in objs if w.kind in LONG_RUNNING and w.schema_ok and selects(spec.get("selector") or {}, pod_labels(w))]
        if not matched:
            rep.error(p, f"selector {spec.get('selector')} matches no Deployment/StatefulSet pods")
        for w in matched:
            lo = hpa_min.get(w.name, (w.doc["spec"].get("replicas", 1), None))[0]
            ma = spec.get("minAvailable")
            if isinstance(ma, int) and ma >= lo:
                rep.error(p, f"minAvailable {ma} with as few as {lo} replica(s) of {w}: no voluntary eviction could ever proceed")
    return hpa_min


def check_network_policies(objs: list[Obj], rep: Report):
    workloads = [o for o in objs if o.kind in WORKLOADS and o.schema_ok]
    for n in objs:
        if n.kind != "NetworkPolicy" or not n.schema_ok:
            continue
        spec = n.doc["spec"]
        sel = spec.get("podSelector") or {}
        if not sel.get("matchLabels") and not sel.get("matchExpressions"):
            continue  # a namespace-wide policy
        matched = [w for w in workloads if selects(sel, pod_labels(w))]
        if not matched:
            rep.error(n, f"podSelector {sel} matches no pods in the manifests")
            continue
        names = {p.get("name") for w in matched for c in pod_spec(w).get("containers") or [] for p in c.get("ports") or []}
        for rule in spec.get("ingress") or []:
            for p in rule.get("ports") or []:
                if isinstance(p.get("port"), str) and p["port"] not in names:
                    rep.error(n, f"ingress port {p['port']!r} is not a named port of the selected pods {sorted(map(str, names))}")
        if "Egress" in (spec.get("policyTypes") or []):
            dns = any(p.get("port") == 53 for r in spec.get("egress") or [] for p in r.get("ports") or [])
            if not dns and spec.get("egress"):
                rep.error(n, "restricts egress but allows no DNS (port 53)")


def _acl_grants(user: Obj) -> set[tuple]:
    grants = set()
    for acl in ((user.doc.get("spec") or {}).get("authorization") or {}).get("acls") or []:
        res = acl.get("resource") or {}
        if acl.get("type", "allow") != "allow":
            continue
        for op in acl.get("operations") or []:
            grants.add((res.get("type"), res.get("name"), res.get("patternType", "literal"), op, acl.get("host", "*")))
    return grants


def check_kafka(objs: list[Obj], rep: Report, ctx: dict, hpa: dict):
    topics = [o for o in objs if o.kind == "KafkaTopic" and o.schema_ok]
    users = [o for o in objs if o.kind == "KafkaUser" and o.schema_ok]
    strimzi = [o for o in objs if (o.api or "").startswith("kafka.strimzi.io/")]
    clusters = {o.labels.get("strimzi.io/cluster") for o in strimzi}
    if len(clusters) > 1:
        rep.error(None, f"Strimzi resources name different clusters {sorted(map(str, clusters))}")
    for t in topics:
        spec = t.doc["spec"]
        isr = (spec.get("config") or {}).get("min.insync.replicas")
        if isr is not None and int(isr) > spec["replicas"]:
            rep.error(t, f"min.insync.replicas {isr} > replicas {spec['replicas']}: no write could succeed with acks=all")
    services = ctx["services"]
    if not services or not strimzi:
        return
    prefixes = {svc: (env.value("APP_KAFKA__TOPIC_PREFIX") or "") for svc, (_, env) in services.items()}
    if len(set(prefixes.values())) > 1:
        rep.error(None, f"the services use different topic prefixes {prefixes}")
    prefix = next(iter(prefixes.values()))
    if topics:
        have = {t.doc["spec"].get("topicName", t.name): t for t in topics}
        want = {prefix + t for t in TOPICS}
        for name in sorted(want - have.keys()):
            rep.error(None, f"no KafkaTopic for topic {name} (APP_KAFKA__TOPIC_PREFIX={prefix!r})")
        for name in sorted(have.keys() - want):
            rep.error(have[name], f"topic {name} is not one the services use with prefix {prefix!r}")
        for svc, access in KAFKA_ACCESS.items():
            for t in access["read"]:
                topic = have.get(prefix + t)
                lo_hi = hpa.get(svc)
                if topic and lo_hi and lo_hi[1] and lo_hi[1] > topic.doc["spec"]["partitions"]:
                    rep.error(topic, f"{topic.doc['spec']['partitions']} partitions but the {svc} may scale to "
                                     f"{lo_hi[1]} consumers: the extra ones would idle")
    user_by_name = {u.doc["spec"].get("userName", u.name): u for u in users}
    checked_users = set()
    for svc, (dep, env) in services.items():
        proto = env.value("APP_KAFKA__SECURITY__PROTOCOL") or "plaintext"
        user = None
        if proto.startswith("sasl_"):
            uname = env.value("APP_KAFKA__SECURITY__USERNAME")
            user = user_by_name.get(uname)
            if user is None:
                if users or topics:
                    rep.error(dep, f"the {svc} authenticates as {uname!r} but there is no such KafkaUser")
                continue
            mech = env.value("APP_KAFKA__SECURITY__SASL_MECHANISM")
            auth = (user.doc["spec"].get("authentication") or {}).get("type")
            if mech and mech.lower() != auth:
                rep.error(dep, f"the {svc} uses {mech} but KafkaUser {user.name} has authentication {auth}")
            pw = env.vars.get("APP_KAFKA__SECURITY__PASSWORD")
            if pw and pw[0] == "secret" and (pw[1], pw[2]) != (user.name, "password"):
                rep.error(dep, f"the {svc}'s password comes from Secret {pw[1]}/{pw[2]}, but the User Operator "
                               f"writes KafkaUser {user.name}'s to {user.name}/password")
        else:
            user = next((u for u in users if u.labels.get("app.kubernetes.io/name") == svc), None)
        if user is None:
            continue
        checked_users.add(user.name)
        access = KAFKA_ACCESS[svc]
        want = set()
        for t in access["read"]:
            want |= {("topic", prefix + t, "literal", op, "*") for op in ("Read", "Describe")}
        for t in access["write"]:
            want |= {("topic", prefix + t, "literal", op, "*") for op in ("Write", "Describe")}
        want.add(("group", prefix + access["group"], "literal", "Read", "*"))
        have = _acl_grants(user)
        for g in sorted(want - have):
            rep.error(user, f"missing ACL for the {svc}: {g[3]} on {g[0]} {g[1]}")
        for g in sorted(have - want, key=str):
            rep.error(user, f"ACL beyond what the {svc} needs: {g[3]} on {g[0]} {g[1]} ({g[2]}, host {g[4]})")
    for u in users:
        if u.name not in checked_users and u.labels.get("app.kubernetes.io/name") not in services:
            rep.error(u, "KafkaUser of no service in the manifests")


# ------------------------------------------------------------------ monitoring, mesh, GitOps

PROMETHEUS_NAMESPACE = "monitoring"  # where Prometheus runs (docs/DEPLOYMENT.md, Prerequisites)
SEVERITIES = ("critical", "warning", "info")
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "PriorityClass", "StorageClass", "PersistentVolume", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "IngressClass"}
# Which container port numbers carry the service's own TLS, by the settings that turn it on.
TLS_LISTENERS = (("APP_GRPC__TLS__CERT_FILE", "APP_GRPC__LISTEN"), ("APP_HTTP__TLS__CERT_FILE", "APP_HTTP__LISTEN"))


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def _metrics_problems(inventory, expr: str) -> list[str]:
    import check_metrics
    return check_metrics.check_expression(expr, inventory)


def check_prometheus_rules(objs: list[Obj], rep: Report, opts):
    anchors = github_anchors(opts.operations.read_text()) if opts.operations else None
    alerts = Counter()
    for o in objs:
        if o.kind != "PrometheusRule" or not o.schema_ok:
            continue
        for g in o.doc["spec"].get("groups") or []:
            for r in g.get("rules") or []:
                name = r.get("alert") or r.get("record")
                where = f"{'alert' if 'alert' in r else 'record'} {name}"
                if "alert" in r:
                    alerts[name] += 1
                    sev = (r.get("labels") or {}).get("severity")
                    if sev not in SEVERITIES:
                        rep.error(o, f"{where}: label severity is {sev!r}, not one of {', '.join(SEVERITIES)}")
                    ann = r.get("annotations") or {}
                    for key in ("summary", "description", "runbook_url"):
                        if not str(ann.get(key, "")).strip():
                            rep.error(o, f"{where}: annotation {key} is missing")
                    url = str(ann.get("runbook_url", ""))
                    if url and anchors is not None:
                        m = re.fullmatch(r"\S*/docs/OPERATIONS\.md#([\w-]+)", url)
                        if not m:
                            rep.error(o, f"{where}: runbook_url {url} does not point at a heading of docs/OPERATIONS.md")
                        elif m.group(1) not in anchors:
                            rep.error(o, f"{where}: runbook_url anchor #{m.group(1)} is not a heading of {opts.operations.name}")
                if opts.inventory is not None:
                    for p in _metrics_problems(opts.inventory, str(r.get("expr", ""))):
                        rep.error(o, f"{where}: {p}")
        if opts.promtool:
            check_with_promtool(o, rep, opts.promtool)
    for name, n in alerts.items():
        if n > 1:
            rep.error(None, f"alert {name} is defined {n} times")


def check_with_promtool(o: Obj, rep: Report, promtool: str):
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".rules.yaml", delete=False) as fh:
        yaml.safe_dump(o.doc["spec"], fh, sort_keys=False)
        path = fh.name
    try:
        run = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if run.returncode != 0:
        lines = [line.strip().replace(path + ": ", "").replace(path, "rules")
                 for line in (run.stdout + run.stderr).splitlines()]
        lines = [line for line in lines if line and not line.startswith(("Checking ", "FAILED:"))]
        for line in lines or [f"exit status {run.returncode}"]:
            rep.error(o, f"promtool check rules: {_short(line, 400)}")


def check_dashboards(objs: list[Obj], rep: Report, opts):
    for o in objs:
        if o.kind != "ConfigMap" or o.labels.get("grafana_dashboard") != "1":
            continue
        data = o.doc.get("data") or {}
        if not any(k.endswith(".json") for k in data):
            rep.error(o, "labelled grafana_dashboard but holds no *.json dashboard")
        for key, text in data.items():
            if not key.endswith(".json"):
                continue
            try:
                dash = json.loads(text)
            except json.JSONDecodeError as e:
                rep.error(o, f"{key}: not valid JSON: {e}")
                continue
            for field in ("uid", "title", "panels"):
                if not dash.get(field):
                    rep.error(o, f"{key}: dashboard has no {field}")
            ids = Counter()
            panels = list(dash.get("panels") or [])
            for p in list(panels):
                panels += p.get("panels") or []
            for p in panels:
                ids[p.get("id")] += 1
                for t in p.get("targets") or []:
                    if not t.get("expr") or not t.get("refId"):
                        rep.error(o, f"{key}: panel {p.get('title')!r} has a target without expr or refId")
            for pid, n in ids.items():
                if n > 1:
                    rep.error(o, f"{key}: panel id {pid} is used {n} times")
            if opts.inventory is not None:
                import check_metrics
                for where, expr in check_metrics.expressions_from_dashboard(dash):
                    for p in check_metrics.check_expression(expr, opts.inventory):
                        rep.error(o, f"{key}: {where}: {p}")


def _container_ports(w: Obj) -> dict:
    """Port name → number of a workload's containers."""
    return {p.get("name"): p.get("containerPort")
            for c in pod_spec(w).get("containers") or [] for p in c.get("ports") or []}


def _ingress_admission(objs: list[Obj], w: Obj):
    """What the NetworkPolicies selecting w's pods admit: None when none restricts ingress, else
    a list of (namespaces or None for any, port numbers or None for all)."""
    ports = _container_ports(w)
    rules, restricted = [], False
    for n in objs:
        if n.kind != "NetworkPolicy" or not n.schema_ok or n.namespace != w.namespace:
            continue
        spec = n.doc["spec"]
        if not selects(spec.get("podSelector") or {}, pod_labels(w)) and (spec.get("podSelector") or {}):
            continue
        if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
            continue
        restricted = True
        for r in spec.get("ingress") or []:
            nss = None
            if r.get("from"):
                nss = set()
                for peer in r["from"]:
                    name = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                    if "namespaceSelector" in peer and name:
                        nss.add(name)
                    elif "namespaceSelector" in peer or "ipBlock" in peer:
                        nss = None  # any namespace (or addresses): not narrower than "any"
                        break
                    else:
                        nss.add(w.namespace)  # a podSelector alone: the policy's own namespace
            nums = None
            if r.get("ports"):
                nums = set()
                for p in r["ports"]:
                    port = ports.get(p["port"]) if isinstance(p.get("port"), str) else p.get("port")
                    if port is not None:
                        nums |= set(range(port, p.get("endPort", port) + 1))
            rules.append((nss, nums))
    return rules if restricted else None


def _ap_sources(rule: dict):
    """Namespaces an AuthorizationPolicy rule admits, or None for any."""
    if not rule.get("from"):
        return None
    out = set()
    for f in rule["from"]:
        s = f.get("source") or {}
        if s.get("namespaces"):
            out |= set(s["namespaces"])
        elif s.get("principals"):
            for p in s["principals"]:
                m = re.fullmatch(r"[^/]+/ns/([^/*]+)/sa/[^/]+", p)
                if not m:
                    return None
                out.add(m.group(1))
        elif s.get("serviceAccounts"):
            out |= {sa.split("/")[0] for sa in s["serviceAccounts"] if "/" in sa} or {None}
        else:
            return None
    return out


def _ap_ports(rule: dict):
    """Ports an AuthorizationPolicy rule names, or None for every port."""
    if not rule.get("to"):
        return None
    out = set()
    for t in rule["to"]:
        op = t.get("operation") or {}
        if not op.get("ports"):
            return None
        out |= {int(p) for p in op["ports"] if str(p).isdigit()}
    return out


def check_istio(objs: list[Obj], rep: Report, ctx: dict):
    pas = [o for o in objs if o.kind == "PeerAuthentication" and o.schema_ok]
    aps = [o for o in objs if o.kind == "AuthorizationPolicy" and o.schema_ok]
    if not pas and not aps:
        return
    workloads = [o for o in objs if o.kind in LONG_RUNNING and o.schema_ok]
    namespaces = {w.namespace for w in workloads}
    # Mutual TLS: STRICT namespace-wide, nothing weaker for any workload or port.
    for ns in sorted(namespaces, key=str):
        wide = [p for p in pas if p.namespace == ns and not (p.doc.get("spec") or {}).get("selector")]
        if not any(((p.doc.get("spec") or {}).get("mtls") or {}).get("mode") == "STRICT" for p in wide):
            rep.error(None, f"namespace {ns}: no namespace-wide PeerAuthentication with mtls.mode STRICT")
    for p in pas:
        spec = p.doc.get("spec") or {}
        mode = (spec.get("mtls") or {}).get("mode")
        if mode not in (None, "STRICT", "UNSET"):
            rep.error(p, f"mtls.mode {mode} weakens mutual TLS (STRICT is required)")
        for port, cfg in (spec.get("portLevelMtls") or {}).items():
            if (cfg or {}).get("mode") not in ("STRICT", "UNSET", None):
                rep.error(p, f"portLevelMtls {port}: mode {(cfg or {}).get('mode')} weakens mutual TLS")
    # Sidecars: injected into the namespace, not into Jobs (a Job with a sidecar never completes).
    injected = set()
    for n in objs:
        if n.kind == "Namespace":
            if n.labels.get("istio-injection") == "enabled" or "istio.io/rev" in n.labels:
                injected.add(n.name)
            else:
                rep.error(n, "mesh policies but no sidecar injection (label istio-injection: enabled or istio.io/rev)")
    for j in objs:
        if j.kind == "Job" and j.schema_ok and j.namespace in injected:
            meta = ((j.doc.get("spec") or {}).get("template") or {}).get("metadata") or {}
            if str({**(meta.get("annotations") or {}), **(meta.get("labels") or {})}.get("sidecar.istio.io/inject")) != "false":
                rep.error(j, "would get an Istio sidecar, which keeps its pod running: the Job never completes "
                             "(label the pod template sidecar.istio.io/inject: \"false\")")
    # Ports that carry the services' own TLS: Istio sees opaque TCP there.
    tls_ports = defaultdict(set)
    for svc, (dep, env) in ctx["services"].items():
        for cert, listen in TLS_LISTENERS:
            val = env.value(listen) or ""
            if env.has(cert) and val.rpartition(":")[2].isdigit():
                tls_ports[dep.name].add(int(val.rpartition(":")[2]))
    for s in objs:
        if s.kind != "Service" or not s.schema_ok:
            continue
        for w in workloads:
            if w.name not in tls_ports or not selects(s.doc["spec"].get("selector") or {}, pod_labels(w)):
                continue
            cports = _container_ports(w)
            for p in s.doc["spec"].get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                number = cports.get(target) if isinstance(target, str) else target
                proto = p.get("appProtocol") or (p.get("name") or "").split("-")[0]
                if number in tls_ports[w.name] and proto not in ("tls", "https"):
                    rep.error(s, f"port {p.get('name')} carries {w.name}'s own TLS but Istio would treat it as "
                                 f"{proto or 'unknown'} (its name); set appProtocol: tls")
    # Authorization: deny unless allowed, and never more than the NetworkPolicies admit.
    allows = [a for a in aps if (a.doc.get("spec") or {}).get("action", "ALLOW") == "ALLOW"]
    for w in workloads:
        mine = [a for a in allows if a.namespace == w.namespace and (
            not (a.doc.get("spec") or {}).get("selector")
            or selects((a.doc["spec"]["selector"] or {}), pod_labels(w)))]
        if not mine:
            rep.error(w, "no ALLOW AuthorizationPolicy applies to its pods: Istio lets every request through")
            continue
        admission = _ingress_admission(objs, w)
        all_ports = set(_container_ports(w).values())
        for a in mine:
            for i, rule in enumerate((a.doc.get("spec") or {}).get("rules") or [], 1):
                sources, ports = _ap_sources(rule), _ap_ports(rule)
                http_fields = sorted({k for t in rule.get("to") or [] for k in (t.get("operation") or {})
                                      if k in ("paths", "notPaths", "methods", "notMethods", "hosts", "notHosts")})
                for port in sorted(ports if ports is not None else all_ports):
                    if http_fields and port in tls_ports.get(w.name, ()):
                        rep.error(a, f"rule {i}: HTTP conditions ({', '.join(http_fields)}) on port {port}, which "
                                     f"carries {w.name}'s own TLS: Istio sees opaque TCP there and the rule never matches")
                    if admission is None:
                        continue
                    admitted = [nss for nss, nums in admission if nums is None or port in nums]
                    who = "any workload" if sources is None else "namespace(s) " + ", ".join(sorted(map(str, sources)))
                    if not admitted:
                        rep.error(a, f"rule {i} admits {who} to port {port} of {w.name}, which no NetworkPolicy admits")
                    elif None not in admitted:
                        allowed = set().union(*admitted)
                        if sources is None or not sources <= allowed:
                            rep.error(a, f"rule {i} admits {who} to port {port} of {w.name}, which its NetworkPolicy "
                                         f"admits only from namespace(s) {', '.join(sorted(allowed))}")


def check_service_monitors(objs: list[Obj], rep: Report):
    services = [o for o in objs if o.kind == "Service" and o.schema_ok]
    workloads = [o for o in objs if o.kind in LONG_RUNNING and o.schema_ok]
    strict = {p.namespace for p in objs if p.kind == "PeerAuthentication" and p.schema_ok
              and not (p.doc.get("spec") or {}).get("selector")
              and ((p.doc.get("spec") or {}).get("mtls") or {}).get("mode") == "STRICT"}
    for m in objs:
        if m.kind != "ServiceMonitor" or not m.schema_ok:
            continue
        spec = m.doc["spec"]
        selected = [s for s in services if s.namespace == m.namespace and selects(spec.get("selector") or {}, s.labels)]
        if not selected:
            rep.error(m, f"selector {spec.get('selector')} matches no Service in the manifests")
            continue
        endpoints = spec.get("endpoints") or []
        names = {e.get("port") for e in endpoints}
        for e in endpoints:
            if e.get("port") and not any(e["port"] == p.get("name") for s in selected for p in s.doc["spec"].get("ports") or []):
                rep.error(m, f"endpoint port {e['port']} is not a port of any selected Service")
            if m.namespace in strict and e.get("scheme", "http") == "http":
                rep.error(m, f"endpoint {e.get('port')}: plain HTTP, but STRICT mutual TLS refuses it; scrape with "
                             "the mesh's certificates (scheme https and tlsConfig, as k8s/components/istio does)")
        for s in selected:
            used = [p for p in s.doc["spec"].get("ports") or [] if p.get("name") in names]
            if not used:
                rep.error(m, f"no endpoint scrapes Service/{s.name} (its ports: "
                             f"{', '.join(p.get('name', '?') for p in s.doc['spec'].get('ports') or [])})")
            for w in workloads:
                if not selects(s.doc["spec"].get("selector") or {}, pod_labels(w)):
                    continue
                admission = _ingress_admission(objs, w)
                cports = _container_ports(w)
                for p in used:
                    target = p.get("targetPort", p.get("port"))
                    number = cports.get(target) if isinstance(target, str) else target
                    if admission is not None and not any(
                            (nums is None or number in nums) and (nss is None or PROMETHEUS_NAMESPACE in nss)
                            for nss, nums in admission):
                        rep.error(m, f"scrapes port {number} of {w.name}, but its NetworkPolicy does not admit "
                                     f"namespace {PROMETHEUS_NAMESPACE} there")


def _listed(entries: list, group: str, kind: str) -> bool:
    import fnmatch
    return any(fnmatch.fnmatchcase(group, e.get("group", "")) and fnmatch.fnmatchcase(kind, e.get("kind", ""))
               for e in entries or [])


def render_argocd_source(app: Obj, repo_root: Path, kustomize: str, work: Path) -> Path:
    """Renders an Application's kustomize source the way Argo CD does: its path in a copy of the
    repository's k8s/ tree, with the Application's kustomize components and patches added to that
    kustomization (Argo CD runs `kustomize edit add component` and appends the patches)."""
    import shutil
    import subprocess
    src = app.doc["spec"]["source"]
    path = src.get("path", "").strip("/")
    if not path.startswith("k8s/"):
        raise ValueError(f"source.path {path!r} is not under k8s/")
    root = work / f"argocd-{app.name}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(repo_root / "k8s", root / "k8s")
    kfile = root / path / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    kz = src.get("kustomize") or {}
    for c in kz.get("components") or []:
        if not (root / path / c).is_dir():
            raise ValueError(f"kustomize component {c} does not exist relative to {path}")
        k.setdefault("components", []).append(c)
    k.setdefault("patches", []).extend(kz.get("patches") or [])
    if kz.get("namespace"):
        k["namespace"] = kz["namespace"]
    kfile.write_text(yaml.safe_dump(k, sort_keys=False))
    out = work / f"argocd-{app.name}.yaml"
    run = subprocess.run([kustomize, "build", str(root / path)], capture_output=True, text=True)
    if run.returncode != 0:
        raise ValueError(f"kustomize build of {path} failed: {_short(run.stderr)}")
    out.write_text(run.stdout)
    return out


def check_argocd(objs: list[Obj], rep: Report, opts):
    import tempfile
    projects = {o.name: o for o in objs if o.kind == "AppProject" and o.schema_ok}
    apps = [o for o in objs if o.kind == "Application" and o.schema_ok]
    if not apps:
        return
    work = Path(tempfile.mkdtemp(prefix="argocd-"))
    try:
        for a in apps:
            spec = a.doc["spec"]
            p = projects.get(spec.get("project"))
            if p is None:
                rep.error(a, f"project {spec.get('project')} is not an AppProject in the manifests")
                continue
            pspec = p.doc["spec"]
            src, dest = spec.get("source") or {}, spec.get("destination") or {}
            if not any(r in ("*", src.get("repoURL")) for r in pspec.get("sourceRepos") or []):
                rep.error(a, f"repoURL {src.get('repoURL')} is not in the sourceRepos of AppProject/{p.name}")

            def allowed_ns(ns, server=dest.get("server")):
                import fnmatch
                return any(fnmatch.fnmatchcase(ns or "", d.get("namespace", "")) and
                           fnmatch.fnmatchcase(server or "", d.get("server", "*"))
                           for d in pspec.get("destinations") or [])
            if not allowed_ns(dest.get("namespace")):
                rep.error(a, f"destination {dest.get('server')} namespace {dest.get('namespace')} is not a "
                             f"destination of AppProject/{p.name}")
            if not (opts.kustomize and opts.repo_root):
                continue
            try:
                rendered = load([str(render_argocd_source(a, opts.repo_root, opts.kustomize, work))])
            except (ValueError, OSError) as e:
                rep.error(a, f"cannot render its source: {e}")
                continue
            automated = ((spec.get("syncPolicy") or {}).get("automated") or {})
            kz = src.get("kustomize") or {}
            rep.notes.append(f"{a}: rendered {src.get('path')} as Argo CD would"
                             + (f" (+ components {', '.join(kz['components'])})" if kz.get("components") else "")
                             + (f" (+ {len(kz['patches'])} patch(es))" if kz.get("patches") else "")
                             + f": {len(rendered)} objects, checked against AppProject/{p.name}")
            for o in rendered:
                group = o.api.rpartition("/")[0] if o.api else ""
                if o.kind in CLUSTER_SCOPED:
                    if not _listed(pspec.get("clusterResourceWhitelist"), group, o.kind):
                        rep.error(a, f"renders {o} but AppProject/{p.name} does not admit the cluster-scoped "
                                     f"kind {group or 'core'}/{o.kind} (clusterResourceWhitelist)")
                    continue
                wl, bl = pspec.get("namespaceResourceWhitelist"), pspec.get("namespaceResourceBlacklist")
                if (wl is not None and not _listed(wl, group, o.kind)) or _listed(bl, group, o.kind):
                    rep.error(a, f"renders {o} but AppProject/{p.name} does not admit the kind "
                                 f"{group or 'core'}/{o.kind} (namespaceResourceWhitelist)")
                # (Objects without a namespace go to the destination's, checked above.)
                if o.namespace and not allowed_ns(o.namespace):
                    rep.error(a, f"renders {o} into namespace {o.namespace}, which is not a destination of AppProject/{p.name}")
                annotations = (o.doc.get("metadata") or {}).get("annotations") or {}
                if (o.kind == "Job" and automated.get("selfHeal") and "argocd.argoproj.io/hook" not in annotations
                        and "ttlSecondsAfterFinished" in (o.doc.get("spec") or {})):
                    rep.error(a, f"renders {o} as a plain resource: self-heal re-creates it whenever its "
                                 "ttlSecondsAfterFinished deletes it, and its immutable pod template fails the next "
                                 "sync that changes it; make it an Argo CD hook (argocd.argoproj.io/hook)")
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def check_docs(rep: Report, ctx: dict, docs: Path):
    text = docs.read_text()
    for name in sorted(ctx["env_names"] | ctx["config_keys"]):
        if f"`{name}`" not in text:
            rep.error(None, f"setting {name} is used by the manifests but not documented in {docs}")
    for name in sorted(ctx["secrets"]):
        if name not in text:
            rep.error(None, f"Secret {name} is referenced by the manifests but not mentioned in {docs}")


# --------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--k8s-version", default="1.30.0")
    ap.add_argument("--schemas", default=str(Path(__file__).resolve().parent.parent / "schemas"))
    ap.add_argument("--docs")
    ap.add_argument("--namespace-agnostic", action="store_true")
    ap.add_argument("--label", default=None)
    ap.add_argument("--quiet", action="store_true", help="print errors and the summary only")
    ap.add_argument("--crd-schemas", action="append", default=[], metavar="DIR",
                    help="JSON Schemas converted from upstream CRDs (k8s/tools/crd_schemas.py); repeatable")
    ap.add_argument("--metrics-inventory", metavar="SCRAPE",
                    help="check alert and dashboard expressions against these metrics (check_metrics.py)")
    ap.add_argument("--promtool", metavar="PATH", help="run `promtool check rules` on every PrometheusRule")
    ap.add_argument("--operations", metavar="MD", help="docs/OPERATIONS.md: every alert's runbook_url anchor must be a heading")
    ap.add_argument("--kustomize", metavar="PATH", help="render Argo CD Applications' sources with this kustomize")
    ap.add_argument("--repo-root", metavar="DIR", help="the repository the Applications' source paths are in")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args.operations = Path(args.operations) if args.operations else None
    args.repo_root = Path(args.repo_root) if args.repo_root else None
    args.inventory = None
    if args.metrics_inventory:
        import check_metrics
        args.inventory = check_metrics.Inventory()
        args.inventory.add_scrape(Path(args.metrics_inventory).read_text(), args.metrics_inventory)
    crd_dirs = tuple(Path(d) for d in args.crd_schemas)

    rep = Report()
    try:
        objs = load(args.files)
    except yaml.YAMLError as e:
        print(f"ERROR manifests: not valid YAML: {_short(str(e))}")
        return 1
    if not objs:
        print("ERROR manifests: no objects")
        return 1
    for o in objs:
        check_schema(o, args.k8s_version, Path(args.schemas), rep, crd_dirs)
    ctx = {"secrets": defaultdict(set), "env_names": set(), "config_keys": set(), "services": {}}
    for o in objs:
        # Settings files, not dashboards (the Grafana sidecar's ConfigMaps hold JSON files).
        if o.kind == "ConfigMap" and o.schema_ok and o.labels.get("grafana_dashboard") != "1":
            ctx["config_keys"] |= set((o.doc.get("data") or {}).keys())
    check_general(objs, rep, args.namespace_agnostic)
    check_workloads(objs, rep, ctx)
    check_services(objs, rep)
    hpa = check_autoscaling(objs, rep)
    check_network_policies(objs, rep)
    check_kafka(objs, rep, ctx, hpa)
    check_prometheus_rules(objs, rep, args)
    check_dashboards(objs, rep, args)
    check_service_monitors(objs, rep)
    check_istio(objs, rep, ctx)
    check_argocd(objs, rep, args)
    if args.docs:
        check_docs(rep, ctx, Path(args.docs))

    label = args.label or ", ".join(args.files)
    if not args.quiet:
        for o in sorted(objs, key=lambda o: (str(o.kind), str(o.name))):
            status = "ok " if o.schema_ok else "BAD"
            print(f"  {status} {str(o):58s} {o.validator}")
        for note in rep.notes:
            print(f"  {note}")
        if ctx["secrets"]:
            print("  Secrets it expects to exist (created out of band, see docs/DEPLOYMENT.md):")
            for name in sorted(ctx["secrets"], key=str):
                print(f"      {name}: {', '.join(sorted(ctx['secrets'][name]))}")
    for e in rep.errors:
        print(f"ERROR {e}")
    kinds = Counter(o.kind for o in objs)
    builtin = sum(1 for o in objs if o.validator.startswith("kubernetes-validate"))
    custom = sum(1 for o in objs if o.validator.startswith(Path(args.schemas).name))
    upstream = sum(1 for o in objs if o.validator.startswith("upstream CRD"))
    verdict = "FAILED" if rep.errors else "valid"
    print(f"{label}: {len(objs)} objects {verdict} — {builtin} against Kubernetes {args.k8s_version} "
          f"(kubernetes-validate --strict), {custom} against k8s/schemas, {upstream} against upstream CRDs, "
          f"{len(rep.errors)} error(s); kinds: {', '.join(f'{k} {n}' for k, n in sorted(kinds.items(), key=lambda kv: str(kv[0])))}")
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
