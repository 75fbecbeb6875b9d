package kafka_test

import data.fixtures
import data.kafka
import rego.v1

_strimzi_meta(name) := object.union(fixtures.meta(name), {"labels": object.union(fixtures.meta(name).labels, {"strimzi.io/cluster": "saga-kafka"})})

_topic(name) := {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic", "metadata": _strimzi_meta(replace(name, ".", "-")), "spec": {
	"topicName": name, "partitions": 6, "replicas": 3, "config": {"min.insync.replicas": "2"},
}}

_topics := [_topic(t) | some t in data.saga.topics]

_acl(type, name, ops) := {"resource": {"type": type, "name": name, "patternType": "literal"}, "operations": ops, "host": "*"}

# The orchestrator's user, found by its label (plaintext: no user name in the settings).
_user := {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaUser", "metadata": object.union(_strimzi_meta("saga-orchestrator"), {"labels": {"app.kubernetes.io/name": "orchestrator"}}), "spec": {
	"authentication": {"type": "scram-sha-512"},
	"authorization": {"type": "simple", "acls": [
		_acl("topic", "saga.replies", ["Read", "Describe"]),
		_acl("topic", "user.commands", ["Write", "Describe"]),
		_acl("topic", "post.commands", ["Write", "Describe"]),
		_acl("topic", "saga.replies.dlq", ["Write", "Describe"]),
		_acl("group", "saga-orchestrator", ["Read"]),
	]},
}}

_world := array.concat(fixtures.app, array.concat(_topics, [_user]))

test_matching_kafka_objects if {
	count(kafka.deny) == 0 with input as fixtures.render(_world)
}

test_topics_and_acls_drift if {
	objs := [p |
		some o in _world
		not o.metadata.name == "saga-replies-dlq"
		p := fixtures._patch(o, "KafkaUser", [
			{"op": "replace", "path": "/spec/authorization/acls/0", "value": _acl("topic", "saga.replies", ["Read"])},
			{"op": "add", "path": "/spec/authorization/acls/-", "value": {"resource": {"type": "topic", "name": "saga.", "patternType": "prefix"}, "operations": ["Create"]}},
		])
	]
	msgs := kafka.deny with input as fixtures.render(array.concat(objs, [_topic("saga.extra")]))
	msgs == {
		"manifests: no KafkaTopic for topic saga.replies.dlq (APP_KAFKA__TOPIC_PREFIX='')",
		"KafkaTopic/saga-extra (saga): topic saga.extra is not one the services use with prefix ''",
		"KafkaUser/saga-orchestrator (saga): missing ACL for the orchestrator: Describe on topic saga.replies",
		"KafkaUser/saga-orchestrator (saga): ACL beyond what the orchestrator needs: Create on topic saga. (prefix, host *)",
	}
}

test_prefix if {
	objs := [fixtures._patch(o, "ConfigMap", [{"op": "add", "path": "/data/APP_KAFKA__TOPIC_PREFIX", "value": "dev."}]) | some o in _world]
	msgs := kafka.deny with input as fixtures.render(objs)
	"manifests: no KafkaTopic for topic dev.saga.replies (APP_KAFKA__TOPIC_PREFIX='dev.')" in msgs
	"KafkaUser/saga-orchestrator (saga): missing ACL for the orchestrator: Read on group dev.saga-orchestrator" in msgs
}

test_partitions_and_insync if {
	objs := [fixtures._patch(o, "HorizontalPodAutoscaler", [{"op": "replace", "path": "/spec/maxReplicas", "value": 8}]) | some o in _world]
	broken := array.concat(objs, [object.union(_topic("saga.odd"), {"metadata": {"name": "odd"}, "spec": {"replicas": 1}})])
	msgs := kafka.deny with input as fixtures.render(broken)
	"KafkaTopic/saga-replies (saga): 6 partitions but the orchestrator may scale to 8 consumers: the extra ones would idle" in msgs
	"KafkaTopic/odd (saga): min.insync.replicas 2 > replicas 1: no write could succeed with acks=all" in msgs
}

test_sasl_user if {
	cfg := [
		{"op": "add", "path": "/data/APP_KAFKA__SECURITY__PROTOCOL", "value": "sasl_ssl"},
		{"op": "add", "path": "/data/APP_KAFKA__SECURITY__USERNAME", "value": "saga-orchestrator"},
		{"op": "add", "path": "/data/APP_KAFKA__SECURITY__SASL_MECHANISM", "value": "SCRAM-SHA-256"},
	]
	pw := {"name": "APP_KAFKA__SECURITY__PASSWORD", "valueFrom": {"secretKeyRef": {"name": "kafka", "key": "password"}}}
	objs := [p |
		some o in _world
		c := fixtures._patch(o, "ConfigMap", cfg)
		p := fixtures._patch(c, "Deployment", [{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": pw}])
	]
	msgs := kafka.deny with input as fixtures.render(objs)
	msgs == {
		"Deployment/orchestrator (saga): the orchestrator uses SCRAM-SHA-256 but KafkaUser saga-orchestrator has authentication scram-sha-512",
		"Deployment/orchestrator (saga): the orchestrator's password comes from Secret kafka/password, but the User Operator writes KafkaUser saga-orchestrator's to saga-orchestrator/password",
	}
	unknown := [fixtures._patch(o, "ConfigMap", [{"op": "replace", "path": "/data/APP_KAFKA__SECURITY__USERNAME", "value": "nobody"}]) | some o in objs]
	"Deployment/orchestrator (saga): the orchestrator authenticates as 'nobody' but there is no such KafkaUser" in kafka.deny with input as fixtures.render(unknown)
}

test_user_of_no_service if {
	stray := object.union(_user, {"metadata": {"name": "saga-stray", "labels": {"app.kubernetes.io/name": "stray"}}})
	kafka.deny == {"KafkaUser/saga-stray (saga): KafkaUser of no service in the manifests"} with input as fixtures.render(array.concat(_world, [stray]))
}

test_one_cluster if {
	other := object.union(_topic("saga.replies"), {"metadata": {"name": "other", "labels": {"strimzi.io/cluster": "other"}}})
	"manifests: Strimzi resources name different clusters ['other', 'saga-kafka']" in kafka.deny with input as fixtures.render(array.concat(_world, [other]))
}
