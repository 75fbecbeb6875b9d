# Every object: no duplicates, no committed Secrets or secret-looking ConfigMap keys, the common
# labels, one namespace (none at all in the base).
package general

import data.lib
import rego.v1

_keys := [[o.kind, lib.namespace(o), lib.name(o)] | some o in lib.objects]

deny contains msg if {
	some k in {key | some key in _keys}
	n := count([k | some x in _keys; x == k])
	n > 1
	msg := sprintf("manifests: %s/%s (%s) is defined %d times", [k[0], k[2], _or_none(k[1]), n])
}

deny contains msg if {
	some o in lib.objects
	o.kind == "Secret"
	msg := sprintf("%s: Secret objects must not be committed (no secret values in manifests): reference Secrets that are created out of band", [lib.label(o)])
}

deny contains msg if {
	data.target.namespace_agnostic
	some o in lib.objects
	_namespaced(o)
	msg := sprintf("%s: the base must be namespace-agnostic (no namespace, no Namespace object)", [lib.label(o)])
}

_namespaced(o) if lib.namespace(o) != ""

_namespaced(o) if o.kind == "Namespace"

deny contains msg if {
	namespaces := {_or_none(lib.namespace(o)) | some o in lib.objects; o.kind != "Namespace"}
	some o in lib.objects
	o.kind == "Namespace"
	not lib.name(o) in namespaces
	msg := sprintf("%s: Namespace %s is not the namespace of the other objects %s", [lib.label(o), lib.name(o), lib.quoted_list(sort(namespaces))])
}

deny contains msg if {
	some o in lib.objects
	o.kind != "Namespace"
	missing := [l | some l in data.saga.common_labels; not l in object.keys(lib.labels(o))]
	count(missing) > 0
	msg := sprintf("%s: missing common labels %s", [lib.label(o), lib.quoted_list(missing)])
}

deny contains msg if {
	some o in lib.objects
	o.kind == "ConfigMap"
	some k, _ in object.get(o, "data", {})
	regex.match(data.saga.secret_looking, k)
	msg := sprintf("%s: ConfigMap key %s looks secret: take it from a Secret (secretKeyRef)", [lib.label(o), k])
}

_or_none(ns) := "None" if ns == ""

else := ns
