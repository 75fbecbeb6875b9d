#!/usr/bin/env python3
"""Converts CustomResourceDefinitions into strict JSON Schemas for check_manifests.py.

    crd_schemas.py --out DIR CRD_FILE…

Every version of every CRD in the (multi-document YAML) files becomes
DIR/<kind>-<group>-<version>.json (lower-case kind), the naming k8s/schemas uses, so
check_manifests.py --crd-schemas DIR validates objects of those kinds like the Strimzi ones.
scripts/k8s-validate.sh runs it on the upstream CRDs it fetches (pinned) into its cache, and also
adds the schemas to a copy of kubernetes-validate's schema directory (each has an `$id`, which
kubernetes-validate needs) so that `kubernetes-validate --strict` checks those kinds too; nothing
converted is committed.

The conversion of each version's openAPIV3Schema, as the API server would read it:
  - strict like `kubernetes-validate --strict`: an object schema with `properties` and neither
    `additionalProperties` nor `x-kubernetes-preserve-unknown-fields: true` gets
    `additionalProperties: false`, so unknown and misspelt fields fail (not inside
    allOf/anyOf/oneOf branches, which only add constraints to the object that holds them);
  - `x-kubernetes-int-or-string` allows an integer or a string; `nullable` allows null;
  - apiVersion and kind must be this group/version and kind; metadata is checked against the
    ObjectMeta fields a manifest may set (name, namespace, labels, annotations, …);
  - not evaluated: CEL rules (x-kubernetes-validations), defaults, and `format`s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": False,
}

SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
SCHEMA_ONE = ("items", "additionalProperties", "not")
DROPPED = ("description", "default", "example", "externalDocs", "nullable")


def convert(node, in_branch: bool = False):
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in DROPPED:
            continue
        if key in SCHEMA_MAPS:
            out[key] = {name: convert(s) for name, s in value.items()}
        elif key in SCHEMA_ONE:
            out[key] = convert(value) if isinstance(value, dict) else value
        elif key in SCHEMA_LISTS:
            out[key] = [convert(s, in_branch=True) for s in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out and not in_branch
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def schemas(crd: dict):
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    for v in spec["versions"]:
        raw = ((v.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object"}
        s = convert(raw)
        props = s.setdefault("properties", {})
        props["apiVersion"] = {"const": f"{group}/{v['name']}"}
        props["kind"] = {"const": kind}
        props["metadata"] = METADATA
        s["additionalProperties"] = False
        s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata"})
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["$id"] = f"urn:crd-schema:{group}:{v['name']}:{kind}"  # kubernetes-validate registers schemas by id
        s["title"] = f"{kind} ({group}/{v['name']}), converted from its CustomResourceDefinition"
        yield f"{kind.lower()}-{group}-{v['name']}.json", s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for f in args.files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                for name, schema in schemas(doc):
                    (out / name).write_text(json.dumps(schema, sort_keys=True) + "\n")
                    written += 1
    if not written:
        print(f"crd_schemas: no CustomResourceDefinition in {', '.join(args.files)}", file=sys.stderr)
        return 1
    print(f"crd_schemas: {written} schema(s) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
