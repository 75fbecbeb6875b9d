package general_test

import data.fixtures
import data.general
import rego.v1

test_secret_rejected if {
	secret := {"apiVersion": "v1", "kind": "Secret", "metadata": fixtures.meta("db"), "stringData": {"url": "postgres://x"}}
	general.deny["Secret/db (saga): Secret objects must not be committed (no secret values in manifests): reference Secrets that are created out of band"] with input as fixtures.render(array.concat(fixtures.app, [secret]))
}

test_duplicate if {
	general.deny["manifests: ServiceAccount/orchestrator (saga) is defined 2 times"] with input as fixtures.render(array.concat(fixtures.app, [fixtures.account]))
}

test_namespace_agnostic if {
	msgs := general.deny with input as fixtures.render(fixtures.app) with data.target.namespace_agnostic as true
	"Namespace/saga: the base must be namespace-agnostic (no namespace, no Namespace object)" in msgs
	"Deployment/orchestrator (saga): the base must be namespace-agnostic (no namespace, no Namespace object)" in msgs
}

test_namespace_of_the_others if {
	objs := fixtures.patched("Namespace", [{"op": "replace", "path": "/metadata/name", "value": "other"}])
	general.deny["Namespace/other: Namespace other is not the namespace of the other objects ['saga']"] with input as fixtures.render(objs)
}

test_common_labels if {
	objs := fixtures.patched("Service", [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1part-of"}])
	general.deny["Service/orchestrator (saga): missing common labels ['app.kubernetes.io/part-of']"] with input as fixtures.render(objs)
}

test_secret_looking_configmap_key if {
	objs := fixtures.patched("ConfigMap", [{"op": "add", "path": "/data/APP_KAFKA__SECURITY__PASSWORD", "value": "hunter2"}])
	general.deny["ConfigMap/orchestrator-config (saga): ConfigMap key APP_KAFKA__SECURITY__PASSWORD looks secret: take it from a Secret (secretKeyRef)"] with input as fixtures.render(objs)
}
