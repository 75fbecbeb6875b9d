//! The entry point of the service processes tests spawn (see `saga_e2e::ServiceProcess`).

/// Not a test: runs the service named by `E2E_SERVICE` exactly as its binary does (logs, span
/// export, shutdown on SIGTERM with a bounded flush), configured by `APP_…` and `OTEL_…` variables.
#[test]
#[ignore = "entry point of the service processes the end-to-end tests spawn"]
fn service_process() {
    let Ok(service) = std::env::var("E2E_SERVICE") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = "/nonexistent.toml";
    let result = runtime.block_on(async {
        match service.as_str() {
            "orchestrator" => saga_orchestrator::serve(saga_runtime::config::load(config).unwrap()).await,
            "user-service" => {
                user_service::PROGRAM
                    .serve(saga_runtime::config::load(config).unwrap())
                    .await
            }
            "post-service" => {
                post_service::PROGRAM
                    .serve(saga_runtime::config::load(config).unwrap())
                    .await
            }
            other => panic!("unknown service {other}"),
        }
    });
    result.unwrap();
}
