# Argo CD: each Application's project exists and admits its repository and destination, and every
# object its source renders to (rendered the way Argo CD does by k8s/tools/check_manifests.py,
# data.checked.argocd) is of a kind and in a namespace the AppProject admits; Jobs are hooks when
# self-heal is on.
package argocd

import data.lib
import rego.v1

_apps := lib.valid_of_kind("Application")

_project(a) := ps[count(ps) - 1] if {
	ps := [p | some p in lib.valid_of_kind("AppProject"); lib.name(p) == object.get(a.spec, "project", null)]
	count(ps) > 0
}

deny contains msg if {
	some a in _apps
	not _project(a)
	msg := sprintf("%s: project %v is not an AppProject in the manifests", [lib.label(a), object.get(a.spec, "project", "None")])
}

deny contains msg if {
	some a in _apps
	p := _project(a)
	repo := object.get(a.spec, ["source", "repoURL"], null)
	not _repo_admitted(p, repo)
	msg := sprintf("%s: repoURL %v is not in the sourceRepos of AppProject/%s", [lib.label(a), lib.show(repo), lib.name(p)])
}

_repo_admitted(p, repo) if {
	some r in object.get(p.spec, "sourceRepos", [])
	r in {"*", repo}
}

# fnmatch: * matches any run of characters, "/" and "." included.
_match(pattern, value) if glob.match(pattern, ["\n"], value)

_destination_admitted(p, a, ns) if {
	server := sprintf("%v", [object.get(a.spec, ["destination", "server"], "")])
	some d in object.get(p.spec, "destinations", [])
	_match(object.get(d, "namespace", ""), ns)
	_match(object.get(d, "server", "*"), server)
}

deny contains msg if {
	some a in _apps
	p := _project(a)
	dest := object.get(a.spec, "destination", {})
	not _destination_admitted(p, a, object.get(dest, "namespace", ""))
	msg := sprintf("%s: destination %v namespace %v is not a destination of AppProject/%s", [lib.label(a), lib.show(object.get(dest, "server", null)), lib.show(object.get(dest, "namespace", null)), lib.name(p)])
}

# ------------------------------------------------------------------ what the source renders

_rendered contains [a, p, o] if {
	some a in _apps
	p := _project(a)
	some o in data.checked.argocd[lib.label(a)].objects
}

_group(o) := g if {
	parts := split(object.get(o, "apiVersion", ""), "/")
	count(parts) > 1
	g := concat("/", array.slice(parts, 0, count(parts) - 1))
} else := ""

_listed(entries, group, kind) if {
	some e in entries
	_match(object.get(e, "group", ""), group)
	_match(object.get(e, "kind", ""), kind)
}

_or_core(g) := "core" if g == ""

else := g

deny contains msg if {
	some [a, p, o] in _rendered
	o.kind in data.saga.cluster_scoped
	not _listed(object.get(p.spec, "clusterResourceWhitelist", []), _group(o), o.kind)
	msg := sprintf("%s: renders %s but AppProject/%s does not admit the cluster-scoped kind %s/%s (clusterResourceWhitelist)", [lib.label(a), lib.label(o), lib.name(p), _or_core(_group(o)), o.kind])
}

deny contains msg if {
	some [a, p, o] in _rendered
	not o.kind in data.saga.cluster_scoped
	not _kind_admitted(p, _group(o), o.kind)
	msg := sprintf("%s: renders %s but AppProject/%s does not admit the kind %s/%s (namespaceResourceWhitelist)", [lib.label(a), lib.label(o), lib.name(p), _or_core(_group(o)), o.kind])
}

_kind_admitted(p, group, kind) if {
	not "namespaceResourceWhitelist" in object.keys(p.spec)
	not _listed(object.get(p.spec, "namespaceResourceBlacklist", []), group, kind)
}

_kind_admitted(p, group, kind) if {
	_listed(p.spec.namespaceResourceWhitelist, group, kind)
	not _listed(object.get(p.spec, "namespaceResourceBlacklist", []), group, kind)
}

# (Objects without a namespace go to the destination's, checked above.)
deny contains msg if {
	some [a, p, o] in _rendered
	not o.kind in data.saga.cluster_scoped
	ns := lib.namespace(o)
	ns != ""
	not _destination_admitted(p, a, ns)
	msg := sprintf("%s: renders %s into namespace %s, which is not a destination of AppProject/%s", [lib.label(a), lib.label(o), ns, lib.name(p)])
}

deny contains msg if {
	some [a, p, o] in _rendered
	o.kind == "Job"
	object.get(a.spec, ["syncPolicy", "automated", "selfHeal"], false) == true
	not "argocd.argoproj.io/hook" in object.keys(object.get(o, ["metadata", "annotations"], {}))
	"ttlSecondsAfterFinished" in object.keys(object.get(o, "spec", {}))
	msg := sprintf("%s: renders %s as a plain resource: self-heal re-creates it whenever its ttlSecondsAfterFinished deletes it, and its immutable pod template fails the next sync that changes it; make it an Argo CD hook (argocd.argoproj.io/hook)", [lib.label(a), lib.label(o)])
}
