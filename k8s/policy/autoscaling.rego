# HorizontalPodAutoscalers and PodDisruptionBudgets: targets that exist, sane bounds, requests for
# the resources scaled on, and budgets that let at least one voluntary eviction proceed.
package autoscaling

import data.lib
import rego.v1

_hpas := [h | some h in lib.objects; h.kind == "HorizontalPodAutoscaler"]

_target(h) := ts[count(ts) - 1] if {
	ref := object.get(h, ["spec", "scaleTargetRef"], {})
	ts := [t | some t in lib.objects; t.kind == ref.kind; lib.name(t) == ref.name]
	count(ts) > 0
}

deny contains msg if {
	some h in _hpas
	lib.valid(h)
	not _target(h)
	ref := object.get(h, ["spec", "scaleTargetRef"], {})
	msg := sprintf("%s: scaleTargetRef %v/%v is not in the manifests", [lib.label(h), object.get(ref, "kind", "None"), object.get(ref, "name", "None")])
}

deny contains msg if {
	some h in _hpas
	lib.valid(h)
	_target(h)
	lo := object.get(h.spec, "minReplicas", 1)
	hi := h.spec.maxReplicas
	lo > hi
	msg := sprintf("%s: minReplicas %v > maxReplicas %v", [lib.label(h), lo, hi])
}

deny contains msg if {
	some h in _hpas
	lib.valid(h)
	t := _target(h)
	some m in object.get(h.spec, "metrics", [])
	m.type == "Resource"
	res := object.get(m, ["resource", "name"], null)
	some c in lib.main_containers(t)
	not res in object.keys(object.get(c, ["resources", "requests"], {}))
	msg := sprintf("%s: scales on %v utilisation but %s container %s requests no %v", [lib.label(h), res, lib.label(t), c.name, res])
}

# The fewest replicas a workload may run with, by name: an autoscaler's minReplicas (also when the
# autoscaler has schema errors: no derived error on top of those), else spec.replicas.
min_replicas[n] := lo if {
	some n in {object.get(h, ["spec", "scaleTargetRef", "name"], null) | some h in _hpas}
	los := [lo | some h in _hpas; object.get(h, ["spec", "scaleTargetRef", "name"], null) == n; lo := _hpa_min(h)]
	count(los) > 0
	lo := min(los)
}

_hpa_min(h) := object.get(h.spec, "minReplicas", 1) if {
	lib.valid(h)
	_target(h)
}

# With schema errors, a minReplicas that is not a number never bounds a budget.
_hpa_min(h) := lo if {
	not lib.valid(h)
	lo := object.get(h, ["spec", "minReplicas"], 1)
	is_number(lo)
} else := 1073741824 if not lib.valid(h)

# The most replicas a workload may run with, by name (from a valid autoscaler).
max_replicas[n] := max(his) if {
	some n in {lib.name(t) | some h in _hpas; lib.valid(h); t := _target(h)}
	his := [hi | some h in _hpas; lib.valid(h); lib.name(_target(h)) == n; hi := h.spec.maxReplicas]
	count(his) > 0
}

_pdbs := lib.valid_of_kind("PodDisruptionBudget")

deny contains msg if {
	some p in _pdbs
	count([k | some k in ["minAvailable", "maxUnavailable"]; k in object.keys(p.spec)]) != 1
	msg := sprintf("%s: set exactly one of minAvailable and maxUnavailable", [lib.label(p)])
}

_budgeted(p) := [w | some w in lib.long_running; lib.selects(object.get(p.spec, "selector", {}), lib.pod_labels(w))]

deny contains msg if {
	some p in _pdbs
	count(_budgeted(p)) == 0
	msg := sprintf("%s: selector %v matches no Deployment/StatefulSet pods", [lib.label(p), object.get(p.spec, "selector", null)])
}

deny contains msg if {
	some p in _pdbs
	ma := p.spec.minAvailable
	is_number(ma)
	some w in _budgeted(p)
	lo := _fewest(w)
	ma >= lo
	msg := sprintf("%s: minAvailable %v with as few as %v replica(s) of %s: no voluntary eviction could ever proceed", [lib.label(p), ma, lo, lib.label(w)])
}

_fewest(w) := lo if {
	lo := min_replicas[lib.name(w)]
} else := object.get(w.spec, "replicas", 1)
