//! GetSaga and ListSagas: views, pagination, and precise errors.

use saga_proto::v1::{GetSagaRequest, ListSagasRequest, SagaFilter, SagaState};
use tonic::Code;

use crate::helpers::{assert_status, spawn_app_with};

#[tokio::test]
async fn get_saga_errors_are_precise() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let mut c = app.client.clone();
    let err = c
        .get_saga(GetSagaRequest { saga_id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("saga_id: `x` is not a saga id"),
        "{}",
        err.message()
    );
    let err = c
        .get_saga(GetSagaRequest {
            saga_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "saga_id: required");
    let missing = uuid::Uuid::now_v7();
    let err = c
        .get_saga(GetSagaRequest {
            saga_id: missing.to_string(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &format!("no saga {missing}"));
}

#[tokio::test]
async fn list_sagas_pages_newest_first_and_filters() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(app.register(&format!("l{i}@example.com")).await);
    }
    let post = app.publish("T", "").await.unwrap().saga_id;
    let mut c = app.client.clone();

    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = c
            .list_sagas(ListSagasRequest {
                filter: Some(SagaFilter {
                    saga_type: "register_user".into(),
                    ..Default::default()
                }),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.sagas.len() <= 2);
        seen.extend(page.sagas.iter().map(|s| s.saga_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids, "every register_user saga once, newest first");

    let all = c
        .list_sagas(ListSagasRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sagas.len(), 6);
    assert_eq!(all.sagas[0].saga_id, post);
    assert_eq!(all.sagas[0].current_step, "reserve_quota");
    assert!(all.next_page_token.is_empty());
    let running = c
        .list_sagas(ListSagasRequest {
            filter: Some(SagaFilter {
                state: SagaState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(running.sagas.len(), 6);
    let done = c
        .list_sagas(ListSagasRequest {
            filter: Some(SagaFilter {
                state: SagaState::Completed as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.sagas.is_empty());

    for (req, message) in [
        (
            ListSagasRequest {
                page_size: 501,
                ..Default::default()
            },
            "page_size: `501` is not a number from 1 to 500",
        ),
        (
            ListSagasRequest {
                filter: Some(SagaFilter {
                    state: 42,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.state: 42 is not a saga state",
        ),
        (
            ListSagasRequest {
                page_token: "zzz".into(),
                ..Default::default()
            },
            "page_token: `zzz` is not a saga id (expected a UUID such as 0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b)",
        ),
        (
            ListSagasRequest {
                filter: Some(SagaFilter {
                    saga_type: "nope".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.saga_type: unknown saga type `nope` (known: moderated_post, onboard_author, publish_post, register_user)",
        ),
    ] {
        let err = c.list_sagas(req).await.unwrap_err();
        assert_status(&err, Code::InvalidArgument, message);
    }
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "saga.v1.SagaOrchestrator".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection response")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"saga.v1.SagaOrchestrator".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
}

/// The overview's step latencies skip a succeeded phase that lacks a time (a row written by an
/// older release, or by hand) instead of failing the whole page with a NULL percentile.
#[tokio::test]
async fn the_overview_survives_a_succeeded_phase_without_times() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    sqlx::query(
        "INSERT INTO sagas (id, saga_type, definition_version, state, version, context, steps, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'register_user', 1, 'completed', 3, '{}', \
                 '[{\"action\": {\"status\": \"succeeded\", \"attempt\": 1}}]', now(), now())",
    )
    .execute(&app.pool)
    .await
    .expect("seeded");
    let response = reqwest::get(format!("http://{}/api/overview", app.http_addr))
        .await
        .expect("overview");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    app.stop().await;
}
