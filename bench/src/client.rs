//! A thin client over the orchestrator's gRPC API for tools: start, and wait until terminal.

use std::time::{Duration, Instant};

use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{
    DecideApprovalRequest, GetSagaRequest, SagaEvent, SagaState, SagaView, StartSagaRequest,
};
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Orchestrator {
    client: SagaOrchestratorClient<Channel>,
}

impl Orchestrator {
    /// Connects, retrying for up to `patience` while the orchestrator starts.
    pub async fn connect(url: &str, patience: Duration) -> anyhow::Result<Self> {
        let deadline = Instant::now() + patience;
        loop {
            match SagaOrchestratorClient::connect(url.to_owned()).await {
                Ok(client) => return Ok(Self { client }),
                Err(e) if Instant::now() >= deadline => {
                    anyhow::bail!("the orchestrator at {url} is not reachable: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    pub async fn start(
        &self,
        saga_type: &str,
        payload: serde_json::Value,
        key: &str,
    ) -> anyhow::Result<String> {
        let response = self
            .client
            .clone()
            .start_saga(StartSagaRequest {
                saga_type: saga_type.into(),
                payload_json: payload.to_string(),
                idempotency_key: key.into(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("StartSaga {saga_type}: {}: {}", s.code(), s.message()))?;
        Ok(response.into_inner().saga_id)
    }

    /// The generated gRPC client, for calls this wrapper does not cover.
    pub fn raw(&self) -> SagaOrchestratorClient<Channel> {
        self.client.clone()
    }

    /// Waits until the saga is at step `step` (e.g. waiting for an approval).
    pub async fn wait_at_step(&self, id: &str, step: &str, timeout: Duration) -> anyhow::Result<SagaView> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.get(id).await?;
            if view.current_step == step {
                return Ok(view);
            }
            if is_terminal(view.state) || Instant::now() >= deadline {
                anyhow::bail!("saga {id} never waited at `{step}`: {}", describe(&view));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An operator's approval (`approved`) or rejection of a saga waiting at an approval step.
    pub async fn decide_approval(
        &self,
        saga_id: &str,
        approved: bool,
        reason: &str,
        operator_token: &str,
    ) -> anyhow::Result<SagaView> {
        let mut request = tonic::Request::new(DecideApprovalRequest {
            saga_id: saga_id.into(),
            approved,
            reason: reason.into(),
            step_index: None,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {operator_token}")
                .parse()
                .map_err(|_| anyhow::anyhow!("the operator token is not valid in a header"))?,
        );
        let response = self
            .client
            .clone()
            .decide_approval(request)
            .await
            .map_err(|s| anyhow::anyhow!("DecideApproval {saga_id}: {}: {}", s.code(), s.message()))?;
        response
            .into_inner()
            .saga
            .ok_or_else(|| anyhow::anyhow!("DecideApproval {saga_id}: no saga in the answer"))
    }

    /// Starts a saga as a careful client does: with `key` as its idempotency key, and again with
    /// the same key while the orchestrator answers UNAVAILABLE ("retry later": its store could not
    /// be reached), for up to `budget`. The key makes a repeat the same saga, never a second one.
    pub async fn start_retrying(
        &self,
        saga_type: &str,
        payload: serde_json::Value,
        key: &str,
        budget: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + budget;
        let request = StartSagaRequest {
            saga_type: saga_type.into(),
            payload_json: payload.to_string(),
            idempotency_key: key.into(),
        };
        loop {
            match self.client.clone().start_saga(request.clone()).await {
                Ok(response) => return Ok(response.into_inner().saga_id),
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    eprintln!(
                        "StartSaga {saga_type} (key {key}): UNAVAILABLE ({}); again in 200 ms",
                        s.message()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => anyhow::bail!("StartSaga {saga_type}: {}: {}", s.code(), s.message()),
            }
        }
    }

    /// The saga and its history.
    pub async fn get_with_history(&self, id: &str) -> anyhow::Result<(SagaView, Vec<SagaEvent>)> {
        let response = self
            .client
            .clone()
            .get_saga(GetSagaRequest { saga_id: id.into() })
            .await
            .map_err(|s| anyhow::anyhow!("GetSaga {id}: {}: {}", s.code(), s.message()))?
            .into_inner();
        let view = response
            .saga
            .ok_or_else(|| anyhow::anyhow!("GetSaga {id}: empty response"))?;
        Ok((view, response.history))
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<SagaView> {
        Ok(self.get_with_history(id).await?.0)
    }

    /// Polls until every saga is terminal, or `timeout`; returns the last views, in order.
    pub async fn wait_terminal(&self, ids: &[String], timeout: Duration) -> anyhow::Result<Vec<SagaView>> {
        let deadline = Instant::now() + timeout;
        loop {
            let views = futures::future::try_join_all(ids.iter().map(|id| self.get(id))).await?;
            let open = views.iter().filter(|v| !is_terminal(v.state)).count();
            if open == 0 {
                return Ok(views);
            }
            if Instant::now() >= deadline {
                let stuck: Vec<String> = views
                    .iter()
                    .filter(|v| !is_terminal(v.state))
                    .take(5)
                    .map(describe)
                    .collect();
                anyhow::bail!(
                    "{open} of {} sagas still running after {timeout:?}; for example: {}",
                    ids.len(),
                    stuck.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One line on where a saga stands: state, step, and each step's phases (status, attempt, last
/// error) — what a test prints when a saga does not finish.
pub fn describe(v: &SagaView) -> String {
    let phase = |p: &saga_proto::v1::PhaseView| {
        let status = saga_proto::v1::PhaseStatus::try_from(p.status)
            .map(|s| s.as_str_name().trim_start_matches("PHASE_STATUS_").to_lowercase())
            .unwrap_or_default();
        let err = if p.last_error.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.last_error)
        };
        format!("{} {status} #{}{err}", p.command_type, p.attempt)
    };
    let steps: Vec<String> = v
        .steps
        .iter()
        .map(|s| {
            let mut text = s.action.as_ref().map(phase).unwrap_or_default();
            if let Some(c) = &s.compensation {
                text.push_str(&format!(" / {}", phase(c)));
            }
            text
        })
        .collect();
    format!(
        "saga {} {} at `{}` [{}]",
        v.saga_id,
        state_name(v.state),
        v.current_step,
        steps.join(", ")
    )
}

pub fn is_terminal(state: i32) -> bool {
    matches!(
        SagaState::try_from(state),
        Ok(SagaState::Completed | SagaState::Compensated | SagaState::Failed)
    )
}

pub fn state_name(state: i32) -> &'static str {
    match SagaState::try_from(state) {
        Ok(SagaState::Running) => "running",
        Ok(SagaState::Compensating) => "compensating",
        Ok(SagaState::Completed) => "completed",
        Ok(SagaState::Compensated) => "compensated",
        Ok(SagaState::Failed) => "failed",
        _ => "unknown",
    }
}
