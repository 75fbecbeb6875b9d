#!/usr/bin/env python3
"""The manifest checks that no standard tool expresses (run by scripts/k8s-validate.sh, before
conftest evaluates the Rego policies of k8s/policy/ on the same render; k8s/README.md says which
check is where and why these stay here).

    check_manifests.py [--k8s-version 1.30.0] [--schemas k8s/schemas] [--crd-schemas DIR]…
                       [--metrics-inventory SCRAPE] [--promtool PATH]
                       [--kustomize PATH --repo-root DIR] [--facts OUT.json]
                       [--label NAME] [--quiet] FILE...

1. Schema, every object, reporting every error (kubernetes-validate's command line stops at the
   first one of an object and skips kinds it has no schema for):
   - built-in kinds: kubernetes-validate, strict (unknown fields are errors), for --k8s-version;
   - custom resources: the JSON Schema <kind>-<group>-<version>.json in --schemas (Strimzi), or in
     a --crd-schemas directory (converted from the upstream CRDs of the Prometheus Operator,
     Argo CD and Istio by crd_schemas.py);
   - anything else is an error: an unknown kind is never silently skipped.
2. PromQL (PrometheusRule alerts and records, Grafana dashboard ConfigMaps labelled
   grafana_dashboard: "1"): the metrics and labels every expression uses are in
   --metrics-inventory (check_metrics.py parses the expressions); `promtool check rules` accepts
   each PrometheusRule's .spec.
3. Argo CD: each Application's kustomize source is rendered the way Argo CD would (with
   --kustomize and --repo-root); whether its AppProject admits what it renders is the Rego
   policy's (k8s/policy/argocd.rego), which reads the rendered objects from --facts.

--facts writes what the Rego policies need from here, as conftest --data (data.checked): the
objects that failed schema validation (the policies skip them: their content is not what they
claim) and each Application's rendered objects.

Exit status 0 when everything passes, 1 otherwise. Errors are printed as `ERROR <object>: <why>`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections import Counter
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
    except (kv_utils.SchemaNotFoundError, kv_utils.VersionNotSupportedError) as e:
        # kubernetes-validate also says "version not supported" for an apiVersion it cannot look
        # up at all; only a --k8s-version it has no schemas for stops the run.
        if isinstance(e, kv_utils.VersionNotSupportedError) and not any(
                kv_utils.major_minor(v) == kv_utils.major_minor(version) for v in kv_utils.all_versions()):
            sys.exit(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for {version}")
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


# ------------------------------------------------------------------------------------ PromQL

def check_prometheus_rules(objs: list[Obj], rep: Report, opts):
    """Metrics and labels of every rule's expression; promtool on the whole rule file."""
    import check_metrics
    for o in objs:
        if o.kind != "PrometheusRule" or not o.schema_ok:
            continue
        if opts.inventory is not None:
            for g in o.doc["spec"].get("groups") or []:
                for r in g.get("rules") or []:
                    where = f"alert {r['alert']}" if "alert" in r else f"record {r.get('record')}"
                    for p in check_metrics.check_expression(str(r.get("expr", "")), opts.inventory):
                        rep.error(o, f"{where}: {p}")
        if opts.promtool:
            check_with_promtool(o, rep, opts.promtool)


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
    """Metrics and labels of every dashboard query (the dashboard's structure is Rego's)."""
    import check_metrics
    if opts.inventory is None:
        return
    for o in objs:
        if o.kind != "ConfigMap" or o.labels.get("grafana_dashboard") != "1":
            continue
        for key, text in (o.doc.get("data") or {}).items():
            if not key.endswith(".json"):
                continue
            try:
                dash = json.loads(text)
            except (TypeError, json.JSONDecodeError):
                continue  # reported by k8s/policy/monitoring.rego
            if not isinstance(dash, dict):
                continue
            for where, expr in check_metrics.expressions_from_dashboard(dash):
                for p in check_metrics.check_expression(expr, opts.inventory):
                    rep.error(o, f"{key}: {where}: {p}")


# ----------------------------------------------------------------------------------- Argo CD

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




def render_argocd(objs: list[Obj], rep: Report, opts) -> dict:
    """Each schema-valid Application's source as Argo CD renders it: {Kind/name (ns): {path,
    objects}} for k8s/policy/argocd.rego. Not for an Application whose AppProject is not in the
    manifests (the policy reports that instead: nothing would admit what it renders)."""
    import shutil
    import tempfile
    projects = {o.name for o in objs if o.kind == "AppProject" and o.schema_ok}
    apps = [o for o in objs if o.kind == "Application" and o.schema_ok and o.doc["spec"].get("project") in projects]
    if not apps or not (opts.kustomize and opts.repo_root):
        return {}
    rendered = {}
    work = Path(tempfile.mkdtemp(prefix="argocd-"))
    try:
        for a in apps:
            src = a.doc["spec"].get("source") or {}
            try:
                out = load([str(render_argocd_source(a, opts.repo_root, opts.kustomize, work))])
            except (ValueError, OSError, KeyError, yaml.YAMLError) as e:
                rep.error(a, f"cannot render its source: {e}")
                continue
            kz = src.get("kustomize") or {}
            rep.notes.append(f"{a}: rendered {src.get('path')} as Argo CD would"
                             + (f" (+ components {', '.join(kz['components'])})" if kz.get("components") else "")
                             + (f" (+ {len(kz['patches'])} patch(es))" if kz.get("patches") else "")
                             + f": {len(out)} objects, for k8s/policy/argocd.rego")
            rendered[str(a)] = {"path": src.get("path"), "objects": [o.doc for o in out]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rendered


# --------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--k8s-version", default="1.30.0")
    ap.add_argument("--schemas", default=str(Path(__file__).resolve().parent.parent / "schemas"))
    ap.add_argument("--label", default=None)
    ap.add_argument("--quiet", action="store_true", help="print errors and the summary only")
    ap.add_argument("--crd-schemas", action="append", default=[], metavar="DIR",
                    help="JSON Schemas converted from upstream CRDs (k8s/tools/crd_schemas.py); repeatable")
    ap.add_argument("--metrics-inventory", metavar="SCRAPE",
                    help="check alert and dashboard expressions against these metrics (check_metrics.py)")
    ap.add_argument("--promtool", metavar="PATH", help="run `promtool check rules` on every PrometheusRule")
    ap.add_argument("--kustomize", metavar="PATH", help="render Argo CD Applications' sources with this kustomize")
    ap.add_argument("--repo-root", metavar="DIR", help="the repository the Applications' source paths are in")
    ap.add_argument("--facts", metavar="OUT", help="write what the Rego policies need (conftest --data) here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args.repo_root = Path(args.repo_root) if args.repo_root else None
    args.inventory = None
    if args.metrics_inventory:
        import check_metrics
        args.inventory = check_metrics.Inventory()
        args.inventory.add_scrape(Path(args.metrics_inventory).read_text(), args.metrics_inventory)
    crd_dirs = tuple(Path(d) for d in args.crd_schemas)

    def facts(objs, argocd):
        if args.facts:
            invalid = [{"kind": o.kind, "namespace": o.namespace or "", "name": o.name or "None", "object": o.doc}
                       for o in objs if not o.schema_ok and isinstance(o.kind, str)]
            Path(args.facts).write_text(json.dumps({"checked": {"schema_invalid": invalid, "argocd": argocd}},
                                                   default=str))

    rep = Report()
    try:
        objs = load(args.files)
    except yaml.YAMLError as e:
        facts([], {})
        print(f"ERROR manifests: not valid YAML: {_short(str(e))}")
        return 1
    if not objs:
        facts([], {})
        print("ERROR manifests: no objects")
        return 1
    for o in objs:
        check_schema(o, args.k8s_version, Path(args.schemas), rep, crd_dirs)
    check_prometheus_rules(objs, rep, args)
    check_dashboards(objs, rep, args)
    facts(objs, render_argocd(objs, rep, args))

    label = args.label or ", ".join(args.files)
    if not args.quiet:
        for o in sorted(objs, key=lambda o: (str(o.kind), str(o.name))):
            status = "ok " if o.schema_ok else "BAD"
            print(f"  {status} {str(o):58s} {o.validator}")
        for note in rep.notes:
            print(f"  {note}")
    for e in rep.errors:
        print(f"ERROR {e}")
    kinds = Counter(o.kind for o in objs)
    builtin = sum(1 for o in objs if o.validator.startswith("kubernetes-validate"))
    custom = sum(1 for o in objs if o.validator.startswith(Path(args.schemas).name))
    upstream = sum(1 for o in objs if o.validator.startswith("upstream CRD"))
    verdict = "FAILED" if rep.errors else "valid"
    print(f"{label}: {len(objs)} objects {verdict} — {builtin} against Kubernetes {args.k8s_version} "
          f"(kubernetes-validate --strict), {custom} against k8s/schemas, {upstream} against upstream CRDs, "
          f"{len(rep.errors)} error(s); kinds: "
          f"{', '.join(f'{k} {n}' for k, n in sorted(kinds.items(), key=lambda kv: str(kv[0])))}")
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
