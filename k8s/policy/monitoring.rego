# Monitoring objects: alerts an operator can act on (severity, summary, description, a runbook
# that is a heading of docs/OPERATIONS.md), unique alert names; Grafana dashboards that are valid
# JSON with unique panel ids and complete targets; ServiceMonitors that scrape ports of existing
# Services, which the pods' NetworkPolicies admit from Prometheus' namespace, over the mesh's TLS
# under STRICT mutual TLS. (The metrics and labels the expressions use, and `promtool check
# rules`, are checked by k8s/tools/check_manifests.py.)
package monitoring

import data.lib
import rego.v1

# ------------------------------------------------------------------------------------ alerts

_alert_rules contains [o, r] if {
	some o in lib.valid_of_kind("PrometheusRule")
	some g in object.get(o.spec, "groups", [])
	some r in object.get(g, "rules", [])
	"alert" in object.keys(r)
}

deny contains msg if {
	some [o, r] in _alert_rules
	sev := object.get(r, ["labels", "severity"], null)
	not sev in data.saga.severities
	msg := sprintf("%s: alert %s: label severity is %s, not one of %s", [lib.label(o), r.alert, lib.repr(sev), concat(", ", data.saga.severities)])
}

deny contains msg if {
	some [o, r] in _alert_rules
	some key in ["summary", "description", "runbook_url"]
	trim_space(sprintf("%v", [object.get(r, ["annotations", key], "")])) == ""
	msg := sprintf("%s: alert %s: annotation %s is missing", [lib.label(o), r.alert, key])
}

_runbook_pattern := `^\S*/docs/OPERATIONS\.md#([\w-]+)$`

deny contains msg if {
	data.docs.operations
	some [o, r] in _alert_rules
	url := sprintf("%v", [object.get(r, ["annotations", "runbook_url"], "")])
	url != ""
	not regex.match(_runbook_pattern, url)
	msg := sprintf("%s: alert %s: runbook_url %s does not point at a heading of docs/OPERATIONS.md", [lib.label(o), r.alert, url])
}

deny contains msg if {
	some [o, r] in _alert_rules
	url := sprintf("%v", [object.get(r, ["annotations", "runbook_url"], "")])
	anchor := regex.find_all_string_submatch_n(_runbook_pattern, url, 1)[0][1]
	anchors := data.docs.operations.anchors
	not anchor in anchors
	msg := sprintf("%s: alert %s: runbook_url anchor #%s is not a heading of %s", [lib.label(o), r.alert, anchor, data.docs.operations.name])
}

deny contains msg if {
	names := [n | some [_, n] in _alert_list]
	some n in {n | some n in names}
	k := count([x | some x in names; x == n])
	k > 1
	msg := sprintf("manifests: alert %s is defined %d times", [n, k])
}

# Every alert with its rule object, duplicates kept.
_alert_list := [[lib.label(o), r.alert] |
	some o in lib.valid_of_kind("PrometheusRule")
	some g in object.get(o.spec, "groups", [])
	some r in object.get(g, "rules", [])
	"alert" in object.keys(r)
]

# --------------------------------------------------------------------------------- dashboards

_dashboard_maps := [o | some o in lib.objects; o.kind == "ConfigMap"; object.get(lib.labels(o), "grafana_dashboard", null) == "1"]

deny contains msg if {
	some o in _dashboard_maps
	count([k | some k, _ in object.get(o, "data", {}); endswith(k, ".json")]) == 0
	msg := sprintf("%s: labelled grafana_dashboard but holds no *.json dashboard", [lib.label(o)])
}

deny contains msg if {
	some o in _dashboard_maps
	some key, text in object.get(o, "data", {})
	endswith(key, ".json")
	not json.is_valid(text)
	msg := sprintf("%s: %s: not valid JSON", [lib.label(o), key])
}

_dashboards contains [o, key, dash] if {
	some o in _dashboard_maps
	some key, text in object.get(o, "data", {})
	endswith(key, ".json")
	json.is_valid(text)
	dash := json.unmarshal(text)
}

deny contains msg if {
	some [o, key, dash] in _dashboards
	some field in ["uid", "title", "panels"]
	not lib.truthy(object.get(dash, field, null))
	msg := sprintf("%s: %s: dashboard has no %s", [lib.label(o), key, field])
}

# The panels and, one level down, the panels of rows.
_panels(dash) := array.concat(top, [p | some row in top; some p in object.get(row, "panels", [])]) if {
	top := object.get(dash, "panels", [])
	is_array(top)
}

deny contains msg if {
	some [o, key, dash] in _dashboards
	ids := [object.get(p, "id", null) | some p in _panels(dash)]
	some id in {x | some x in ids}
	n := count([x | some x in ids; x == id])
	n > 1
	msg := sprintf("%s: %s: panel id %s is used %d times", [lib.label(o), key, lib.show(id), n])
}

deny contains msg if {
	some [o, key, dash] in _dashboards
	some p in _panels(dash)
	some t in object.get(p, "targets", [])
	not _complete(t)
	msg := sprintf("%s: %s: panel %s has a target without expr or refId", [lib.label(o), key, lib.repr(object.get(p, "title", null))])
}

_complete(t) if {
	lib.truthy(object.get(t, "expr", null))
	lib.truthy(object.get(t, "refId", null))
}

# ---------------------------------------------------------------------------- ServiceMonitors

_strict_namespaces := {lib.namespace(p) |
	some p in lib.valid_of_kind("PeerAuthentication")
	not lib.truthy(object.get(p, ["spec", "selector"], null))
	object.get(p, ["spec", "mtls", "mode"], null) == "STRICT"
}

_selected(m) := [s |
	some s in lib.valid_of_kind("Service")
	lib.namespace(s) == lib.namespace(m)
	lib.selects(object.get(m.spec, "selector", {}), lib.labels(s))
]

_service_ports(s) := object.get(s, ["spec", "ports"], [])

deny contains msg if {
	some m in lib.valid_of_kind("ServiceMonitor")
	count(_selected(m)) == 0
	msg := sprintf("%s: selector %v matches no Service in the manifests", [lib.label(m), object.get(m.spec, "selector", null)])
}

deny contains msg if {
	some m in lib.valid_of_kind("ServiceMonitor")
	selected := _selected(m)
	count(selected) > 0
	some e in object.get(m.spec, "endpoints", [])
	e.port
	not _port_of_any(e.port, selected)
	msg := sprintf("%s: endpoint port %s is not a port of any selected Service", [lib.label(m), e.port])
}

_port_of_any(name, services) if {
	some s in services
	some p in _service_ports(s)
	p.name == name
}

deny contains msg if {
	some m in lib.valid_of_kind("ServiceMonitor")
	count(_selected(m)) > 0
	lib.namespace(m) in _strict_namespaces
	some e in object.get(m.spec, "endpoints", [])
	object.get(e, "scheme", "http") == "http"
	msg := sprintf("%s: endpoint %v: plain HTTP, but STRICT mutual TLS refuses it; scrape with the mesh's certificates (scheme https and tlsConfig, as k8s/components/istio does)", [lib.label(m), object.get(e, "port", "None")])
}

_used(m, s) := [p | some p in _service_ports(s); p.name in {e.port | some e in object.get(m.spec, "endpoints", [])}]

deny contains msg if {
	some m in lib.valid_of_kind("ServiceMonitor")
	some s in _selected(m)
	count(_used(m, s)) == 0
	msg := sprintf("%s: no endpoint scrapes %s/%s (its ports: %s)", [lib.label(m), s.kind, lib.name(s), concat(", ", [object.get(p, "name", "?") | some p in _service_ports(s)])])
}

deny contains msg if {
	some m in lib.valid_of_kind("ServiceMonitor")
	some s in _selected(m)
	some w in lib.long_running
	lib.selects(object.get(s.spec, "selector", {}), lib.pod_labels(w))
	lib.ingress_restricted(w)
	rules := lib.ingress_admission(w)
	some p in _used(m, s)
	number := _number(w, object.get(p, "targetPort", p.port))
	not lib.admits(rules, data.saga.prometheus_namespace, number)
	msg := sprintf("%s: scrapes port %s of %s, but its NetworkPolicy does not admit namespace %s there", [lib.label(m), lib.show(number), lib.name(w), data.saga.prometheus_namespace])
}

# A Service port's target as a container port number; null when no container port has that name.
_number(w, target) := n if {
	n := lib.target_number(w, target)
} else := null
