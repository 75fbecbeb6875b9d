package argocd_test

import data.argocd
import data.fixtures
import rego.v1

_project := {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject", "metadata": {"name": "saga", "namespace": "argocd"}, "spec": {
	"sourceRepos": ["https://github.com/example/saga-coordinator.git"],
	"destinations": [{"server": "https://kubernetes.default.svc", "namespace": "saga"}],
	"clusterResourceWhitelist": [{"group": "", "kind": "Namespace"}],
	"namespaceResourceWhitelist": [{"group": "", "kind": "*"}, {"group": "apps", "kind": "Deployment"}, {"group": "autoscaling", "kind": "*"}],
	"namespaceResourceBlacklist": [{"group": "", "kind": "Secret"}],
}}

_app := {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "saga-prod", "namespace": "argocd"}, "spec": {
	"project": "saga",
	"source": {"repoURL": "https://github.com/example/saga-coordinator.git", "path": "k8s/overlays/prod"},
	"destination": {"server": "https://kubernetes.default.svc", "namespace": "saga"},
	"syncPolicy": {"automated": {"selfHeal": true}},
}}

# What check_manifests.py would have rendered from the Application's source.
_rendered(objs) := {"argocd": {"Application/saga-prod (argocd)": {"path": "k8s/overlays/prod", "objects": objs}}}

_kept := [o | some o in fixtures.app; o.kind in {"Namespace", "ConfigMap", "ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler"}]

_deny(objs, app) := msgs if {
	msgs := argocd.deny with input as fixtures.render([_project, app]) with data.checked as _rendered(objs)
}

test_admitted if {
	count(_deny(_kept, _app)) == 0
}

test_kinds_not_admitted if {
	secret := {"apiVersion": "v1", "kind": "Secret", "metadata": fixtures.meta("s")}
	role := {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}
	_deny(array.concat(fixtures.app, [secret, role]), _app) == {
		"Application/saga-prod (argocd): renders PodDisruptionBudget/orchestrator (saga) but AppProject/saga does not admit the kind policy/PodDisruptionBudget (namespaceResourceWhitelist)",
		"Application/saga-prod (argocd): renders NetworkPolicy/orchestrator (saga) but AppProject/saga does not admit the kind networking.k8s.io/NetworkPolicy (namespaceResourceWhitelist)",
		"Application/saga-prod (argocd): renders Secret/s (saga) but AppProject/saga does not admit the kind core/Secret (namespaceResourceWhitelist)",
		"Application/saga-prod (argocd): renders ClusterRole/r but AppProject/saga does not admit the cluster-scoped kind rbac.authorization.k8s.io/ClusterRole (clusterResourceWhitelist)",
	}
}

test_destination_repository_project if {
	app := json.patch(_app, [
		{"op": "replace", "path": "/spec/destination/namespace", "value": "strimzi"},
		{"op": "replace", "path": "/spec/source/repoURL", "value": "https://example.com/fork.git"},
	])
	moved := [json.patch(o, [{"op": "replace", "path": "/metadata/namespace", "value": "kafka"}]) | some o in _kept; o.kind == "ConfigMap"]
	_deny(moved, app) == {
		"Application/saga-prod (argocd): destination https://kubernetes.default.svc namespace strimzi is not a destination of AppProject/saga",
		"Application/saga-prod (argocd): repoURL https://example.com/fork.git is not in the sourceRepos of AppProject/saga",
		"Application/saga-prod (argocd): renders ConfigMap/orchestrator-config (kafka) into namespace kafka, which is not a destination of AppProject/saga",
	}
	lost := json.patch(_app, [{"op": "replace", "path": "/spec/project", "value": "other"}])
	_deny(_kept, lost) == {"Application/saga-prod (argocd): project other is not an AppProject in the manifests"}
}

test_destination_patterns if {
	project := json.patch(_project, [{"op": "replace", "path": "/spec/destinations", "value": [{"server": "*", "namespace": "saga*"}]}])
	app := json.patch(_app, [{"op": "replace", "path": "/spec/destination/namespace", "value": "saga-dev"}])
	count(argocd.deny) == 0 with input as fixtures.render([project, app]) with data.checked as _rendered(_kept)
}

test_jobs_are_hooks_under_self_heal if {
	job := {"apiVersion": "batch/v1", "kind": "Job", "metadata": fixtures.meta("migrate"), "spec": {"ttlSecondsAfterFinished": 600}}
	project := json.patch(_project, [{"op": "add", "path": "/spec/namespaceResourceWhitelist/-", "value": {"group": "batch", "kind": "Job"}}])
	msgs := argocd.deny with input as fixtures.render([project, _app]) with data.checked as _rendered([job])
	msgs == {"Application/saga-prod (argocd): renders Job/migrate (saga) as a plain resource: self-heal re-creates it whenever its ttlSecondsAfterFinished deletes it, and its immutable pod template fails the next sync that changes it; make it an Argo CD hook (argocd.argoproj.io/hook)"}
	hook := json.patch(job, [{"op": "add", "path": "/metadata/annotations", "value": {"argocd.argoproj.io/hook": "PreSync"}}])
	count(argocd.deny) == 0 with input as fixtures.render([project, _app]) with data.checked as _rendered([hook])
}
