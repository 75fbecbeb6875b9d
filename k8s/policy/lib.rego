# Helpers shared by the policies (no rules of its own that fail anything).
#
# Input: conftest test --combine, so `input` is a list of {"path", "contents"}, one per YAML
# document of every file given: all objects of a render are seen together, and cross-references
# (a Service and its Deployment, a KafkaUser and the services' settings) can be checked.
#
# Data (conftest --data):
#   data.saga      k8s/policy/data/saga.yaml: what the services accept, read and write;
#   data.docs      docs.json, written by scripts/k8s-validate.sh: DEPLOYMENT.md's text and the
#                  anchors of OPERATIONS.md's headings;
#   data.target    what is checked: {"label", "namespace_agnostic", "docs"} (per target);
#   data.checked   written by k8s/tools/check_manifests.py for this render: the objects that failed
#                  schema validation (the policies skip those, as their errors are reported
#                  already) and what each Argo CD Application's source renders to.
#
# A trap for whoever edits these: under `not`, OPA evaluates a function call's result or a
# membership's left-hand reference before negating, so `not f(x) == v` and `not o.a.b in s` are
# false (not true) when f(x) or o.a.b is undefined. Compare values that always exist
# (object.get with a default, value_of, show) or negate a helper rule instead.
package lib

import rego.v1

workload_kinds := {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}

long_running_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}

# ------------------------------------------------------------------------------------ objects

objects := [o | some f in input; o := f.contents; is_object(o)]

name(o) := object.get(o, ["metadata", "name"], "None")

namespace(o) := object.get(o, ["metadata", "namespace"], "")

labels(o) := object.get(o, ["metadata", "labels"], {})

# How an object is named in messages: Kind/name, and (namespace) when it has one.
label(o) := sprintf("%s/%s (%s)", [o.kind, name(o), namespace(o)]) if namespace(o) != ""

label(o) := sprintf("%s/%s", [o.kind, name(o)]) if namespace(o) == ""

_key(o) := [o.kind, namespace(o), name(o)]

_invalid_keys := {[i.kind, object.get(i, "namespace", ""), i.name] | some i in data.checked.schema_invalid}

_invalid_objects := {i.object | some i in data.checked.schema_invalid}

_key_counts[k] := n if {
	some k in _invalid_keys
	n := count([o | some o in objects; _key(o) == k])
}

# Objects that passed schema validation (the checker reports the others; checking their content
# again would only add derived errors). The checker names them by kind, namespace and name, and
# gives the object itself to tell apart objects that share those.
valid(o) if not _invalid(o)

_invalid(o) if o in _invalid_objects

_invalid(o) if _key_counts[_key(o)] == 1

valid_of_kind(kind) := [o | some o in objects; o.kind == kind; valid(o)]

workloads := [o | some o in objects; o.kind in workload_kinds; valid(o)]

long_running := [o | some o in objects; o.kind in long_running_kinds; valid(o)]

# ------------------------------------------------------------------------ selectors and pods

# A label selector: matchLabels / matchExpressions, or a plain map (a Service's).
selects(sel, lbls) if {
	is_object(sel)
	_structured(sel)
	every k, v in object.get(sel, "matchLabels", {}) {
		lbls[k] == v
	}
	every ex in object.get(sel, "matchExpressions", []) {
		_expression(ex, lbls)
	}
}

selects(sel, lbls) if {
	is_object(sel)
	count(sel) > 0
	not _structured(sel)
	every k, v in sel {
		lbls[k] == v
	}
}

_structured(sel) if "matchLabels" in object.keys(sel)

_structured(sel) if "matchExpressions" in object.keys(sel)

_expression(ex, lbls) if {
	ex.operator == "In"
	lbls[ex.key] in object.get(ex, "values", [])
}

_expression(ex, lbls) if {
	ex.operator == "NotIn"
	not object.get(lbls, ex.key, null) in object.get(ex, "values", [])
}

_expression(ex, lbls) if {
	ex.operator == "Exists"
	ex.key in object.keys(lbls)
}

_expression(ex, lbls) if {
	ex.operator == "DoesNotExist"
	not ex.key in object.keys(lbls)
}

_expression(ex, _) if not ex.operator in {"In", "NotIn", "Exists", "DoesNotExist"}

pod_spec(o) := object.get(o, ["spec", "template", "spec"], {})

pod_labels(o) := object.get(o, ["spec", "template", "metadata", "labels"], {})

main_containers(o) := object.get(pod_spec(o), "containers", [])

# Init containers and containers.
all_containers(o) := array.concat(object.get(pod_spec(o), "initContainers", []), main_containers(o))

# [name, number] of every port of a workload's containers (not the init containers').
container_ports(w) := {[object.get(p, "name", null), p.containerPort] |
	some c in main_containers(w)
	some p in object.get(c, "ports", [])
}

port_numbers(w) := {n | some [_, n] in container_ports(w)}

# A Service port's target as a container port number (a name resolved through the pods' ports).
target_number(w, target) := n if {
	is_string(target)
	some pair in container_ports(w)
	pair[0] == target
	n := pair[1]
}

target_number(_, target) := target if is_number(target)

# ------------------------------------------------------------------------------- ConfigMaps

_configmap_names := {name(o) | some o in objects; o.kind == "ConfigMap"}

# By name (the last one wins, like a later document would).
configmaps[n] := cms[count(cms) - 1] if {
	some n in _configmap_names
	cms := [o | some o in objects; o.kind == "ConfigMap"; name(o) == n]
}

# --------------------------------------------------------------------------- environments

# A container's environment after envFrom and env, later entries winning: name → entry, where an
# entry is {"from": "value"|"configmap"|"secret"|"field"|"other", "value"?, "secret"?, "key"?}.
env(c) := {n: e |
	pairs := array.concat(_env_from_pairs(c), _env_pairs(c))
	some i, [n, e] in pairs
	not _overridden(pairs, i, n)
}

_overridden(pairs, i, n) if {
	some j, pair in pairs
	j > i
	pair[0] == n
}

_env_from_pairs(c) := [[concat("", [object.get(src, "prefix", ""), k]), {"from": "configmap", "value": sprintf("%v", [v])}] |
	some src in object.get(c, "envFrom", [])
	cm := configmaps[src.configMapRef.name]
	some k, v in object.get(cm, "data", {})
]

_env_pairs(c) := [[e.name, _env_entry(e)] | some e in object.get(c, "env", []); _env_entry(e)]

_env_entry(e) := {"from": "value", "value": sprintf("%v", [e.value])} if "value" in object.keys(e)

_env_entry(e) := {"from": "secret", "secret": object.get(ref, "name", null), "key": object.get(ref, "key", null)} if {
	not "value" in object.keys(e)
	ref := e.valueFrom.secretKeyRef
}

_env_entry(e) := {"from": "configmap", "value": sprintf("%v", [cm.data[ref.key]])} if {
	not "value" in object.keys(e)
	not e.valueFrom.secretKeyRef
	ref := e.valueFrom.configMapKeyRef
	cm := configmaps[ref.name]
}

_env_entry(e) := {"from": "field", "path": e.valueFrom.fieldRef.fieldPath} if {
	not "value" in object.keys(e)
	not e.valueFrom.secretKeyRef
	not e.valueFrom.configMapKeyRef
	e.valueFrom.fieldRef
}

_env_entry(e) := {"from": "other"} if {
	not "value" in object.keys(e)
	e.valueFrom
	not e.valueFrom.secretKeyRef
	not e.valueFrom.configMapKeyRef
	not e.valueFrom.fieldRef
}

_env_entry(e) := {"from": "value", "value": ""} if {
	not "value" in object.keys(e)
	not "valueFrom" in object.keys(e)
}

# A setting's plain value (a literal or from a ConfigMap); undefined when unset or from a Secret.
value(vars, n) := vars[n].value if vars[n].from in {"value", "configmap"}

# The plain value, null when unset or not plain (never undefined: safe to compare with !=).
value_of(vars, n) := object.get(vars, [n, "value"], null)

# The plain value when it is not empty (undefined otherwise).
setting(vars, n) := v if {
	v := value(vars, n)
	v != ""
}

# The plain value, or fallback when it is unset or empty.
value_or(vars, n, fallback) := v if {
	v := setting(vars, n)
} else := fallback

# ----------------------------------------------------------------------- the saga services

# {"service", "migrate"} for a container running the project's image, by its command.
saga_service(c) := {"service": svc, "migrate": migrate} if {
	image := sprintf("%v", [object.get(c, "image", "")])
	parts := split(image, "/")
	contains(parts[count(parts) - 1], data.saga.image)
	cmd := array.concat(object.get(c, "command", []), object.get(c, "args", []))
	count(cmd) > 0
	bin := split(cmd[0], "/")
	svc := bin[count(bin) - 1]
	svc in data.saga.services
	migrate := "migrate" in array.slice(cmd, 1, count(cmd))
}

saga_service(c) := {"service": "orchestrator", "migrate": false} if {
	image := sprintf("%v", [object.get(c, "image", "")])
	parts := split(image, "/")
	contains(parts[count(parts) - 1], data.saga.image)
	count(array.concat(object.get(c, "command", []), object.get(c, "args", []))) == 0
}

# Every container of every schema-valid workload: {"obj", "c", "env", "init", "saga"?}.
containers contains r if {
	some o in workloads
	inits := object.get(pod_spec(o), "initContainers", [])
	some i, c in all_containers(o)
	base := {"obj": o, "c": c, "env": env(c), "init": i < count(inits)}
	r := object.union(base, _saga_part(c))
}

_saga_part(c) := {"saga": s} if s := saga_service(c)

else := {}

# The long-running service containers (not the migration Jobs): service name → record. One per
# service (a second one of the same service would be checked, but not cross-referenced).
services[svc] := recs[0] if {
	some svc in data.saga.services
	recs := [r | some r in containers; r.saga.service == svc; not r.saga.migrate]
	count(recs) > 0
}

# ---------------------------------------------------------------------- network admission

# The NetworkPolicies that restrict ingress to a workload's pods.
_ingress_policies(w) := [n |
	some n in objects
	n.kind == "NetworkPolicy"
	valid(n)
	namespace(n) == namespace(w)
	_np_selects(object.get(n.spec, "podSelector", {}), w)
	"Ingress" in _policy_types(n)
]

_np_selects(sel, _) if count(sel) == 0

_np_selects(sel, w) if selects(sel, pod_labels(w))

_policy_types(n) := t if {
	t := object.get(n.spec, "policyTypes", [])
	count(t) > 0
} else := ["Ingress"]

# Whether any NetworkPolicy restricts a workload's ingress.
ingress_restricted(w) if count(_ingress_policies(w)) > 0

# What the NetworkPolicies selecting a workload's pods admit: a list of rules
# {"any_ns", "namespaces", "any_port", "ports"} (empty when no policy admits anything).
ingress_admission(w) := [_admission(rule, w) | some n in _ingress_policies(w); some rule in object.get(n.spec, "ingress", [])]

_admission(rule, w) := {
	"any_ns": _any_ns_bool(rule),
	"namespaces": {x | some peer in object.get(rule, "from", []); x := _peer_ns(peer, w)},
	"any_port": count(object.get(rule, "ports", [])) == 0,
	"ports": {x |
		some p in object.get(rule, "ports", [])
		port := _np_port(p, w)
		end := object.get(p, "endPort", port)
		end >= port
		some x in numbers.range(port, end)
	},
}

_any_ns_bool(rule) if _any_ns(rule)

else := false

_any_ns(rule) if count(object.get(rule, "from", [])) == 0

# A namespaceSelector that does not name one namespace, or addresses: not narrower than "any".
_any_ns(rule) if {
	some peer in rule.from
	"namespaceSelector" in object.keys(peer)
	not _selected_ns(peer)
}

_any_ns(rule) if {
	some peer in rule.from
	not "namespaceSelector" in object.keys(peer)
	"ipBlock" in object.keys(peer)
}

_selected_ns(peer) := n if {
	n := peer.namespaceSelector.matchLabels["kubernetes.io/metadata.name"]
	n
}

_peer_ns(peer, _) := _selected_ns(peer)

# A podSelector alone: the policy's own namespace.
_peer_ns(peer, w) := namespace(w) if {
	not "namespaceSelector" in object.keys(peer)
	not "ipBlock" in object.keys(peer)
}

_np_port(p, w) := target_number(w, p.port)

# Whether a NetworkPolicy rule set admits namespace ns to port number.
admits(rules, ns, number) if {
	some r in rules
	_admits_port(r, number)
	_admits_ns(r, ns)
}

_admits_port(r, _) if r.any_port

_admits_port(r, number) if number in r.ports

_admits_ns(r, _) if r.any_ns

_admits_ns(r, ns) if ns in r.namespaces

# --------------------------------------------------------------------------------- strings

# Not null, false, 0, "" or empty (what Python would call true).
truthy(x) if {
	not x in {null, false, "", 0}
	not _empty(x)
}

_empty(x) if {
	is_array(x)
	count(x) == 0
}

_empty(x) if {
	is_object(x)
	count(x) == 0
}

_empty(x) if {
	is_set(x)
	count(x) == 0
}

# Python-like rendering of a list of strings: ['a', 'b'].
quoted_list(xs) := sprintf("[%s]", [concat(", ", [sprintf("'%v'", [x]) | some x in xs])])

# A value as in messages: 'text' for strings, None for null.
repr(x) := sprintf("'%s'", [x]) if {
	is_string(x)
} else := "None" if {
	x == null
} else := sprintf("%v", [x])

# A value as in messages, unquoted: None for null.
show(x) := "None" if {
	x == null
} else := sprintf("%v", [x])
