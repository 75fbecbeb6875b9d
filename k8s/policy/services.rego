# Services: a selector that matches the pods of a Deployment or StatefulSet (and of no Job), and
# ports that target ports those pods declare.
package services

import data.lib
import rego.v1

_services := lib.valid_of_kind("Service")

_selector(s) := object.get(s, ["spec", "selector"], {})

_matched(s) := [w | some w in lib.workloads; lib.selects(_selector(s), lib.pod_labels(w))]

deny contains msg if {
	some s in _services
	count(_selector(s)) == 0
	msg := sprintf("%s: has no selector", [lib.label(s)])
}

deny contains msg if {
	some s in _services
	count(_selector(s)) > 0
	count([w | some w in _matched(s); w.kind in lib.long_running_kinds]) == 0
	msg := sprintf("%s: selector %v matches no Deployment/StatefulSet pods", [lib.label(s), _selector(s)])
}

deny contains msg if {
	some s in _services
	some w in _matched(s)
	w.kind == "Job"
	msg := sprintf("%s: selector %v also matches the pods of Job/%s", [lib.label(s), _selector(s), lib.name(w)])
}

deny contains msg if {
	some s in _services
	some w in _matched(s)
	some p in object.get(s.spec, "ports", [])
	target := object.get(p, "targetPort", p.port)
	not _exposes(w, target)
	names := sort([sprintf("%v", [n]) | some [n, _] in lib.container_ports(w)])
	numbers := sort([n | some [_, n] in lib.container_ports(w)])
	msg := sprintf("%s: port %s targets %s, which %s/%s does not expose (ports %s / %v)", [lib.label(s), object.get(p, "name", "None"), lib.repr(target), w.kind, lib.name(w), lib.quoted_list(names), numbers])
}

_exposes(w, target) if {
	is_string(target)
	lib.target_number(w, target)
}

_exposes(w, target) if {
	is_number(target)
	target in lib.port_numbers(w)
}

_exposes(_, target) if {
	not is_string(target)
	not is_number(target)
}
