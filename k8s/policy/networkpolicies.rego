# NetworkPolicies: pod selectors that select pods, named ports those pods declare, and DNS for
# policies that restrict egress.
package networkpolicies

import data.lib
import rego.v1

_policies := lib.valid_of_kind("NetworkPolicy")

_pod_selector(n) := object.get(n.spec, "podSelector", {})

# A namespace-wide policy (no labels to match) selects every pod.
_targeted(n) if count(object.get(_pod_selector(n), "matchLabels", {})) > 0

_targeted(n) if count(object.get(_pod_selector(n), "matchExpressions", [])) > 0

_selected(n) := [w | some w in lib.workloads; lib.selects(_pod_selector(n), lib.pod_labels(w))]

deny contains msg if {
	some n in _policies
	_targeted(n)
	count(_selected(n)) == 0
	msg := sprintf("%s: podSelector %v matches no pods in the manifests", [lib.label(n), _pod_selector(n)])
}

deny contains msg if {
	some n in _policies
	_targeted(n)
	selected := _selected(n)
	count(selected) > 0
	names := {object.get(p, "name", "None") | some w in selected; some c in lib.main_containers(w); some p in object.get(c, "ports", [])}
	some rule in object.get(n.spec, "ingress", [])
	some p in object.get(rule, "ports", [])
	is_string(p.port)
	not p.port in names
	msg := sprintf("%s: ingress port '%s' is not a named port of the selected pods %s", [lib.label(n), p.port, lib.quoted_list(sort(names))])
}

deny contains msg if {
	some n in _policies
	"Egress" in object.get(n.spec, "policyTypes", [])
	count(object.get(n.spec, "egress", [])) > 0
	not _dns(n)
	msg := sprintf("%s: restricts egress but allows no DNS (port 53)", [lib.label(n)])
}

_dns(n) if {
	some r in n.spec.egress
	some p in object.get(r, "ports", [])
	p.port == 53
}
