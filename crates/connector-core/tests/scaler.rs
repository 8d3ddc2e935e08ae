//! The external-push scaler driven through KEDA's whole gRPC protocol by a real client over a
//! real HTTP/2 connection, against a backlog the test controls.

use connector_core::scaler::proto::external_scaler_client::ExternalScalerClient;
use connector_core::scaler::proto::{GetMetricsRequest, IsActiveResponse, ScaledObjectRef};
use connector_core::scaler::{Backlog, Scaler};
use connector_core::{BoxError, ConfigError, Env};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A backlog the test sets (a count or an error), telling how often it was counted.
#[derive(Clone)]
struct Controlled(Arc<(Mutex<State>, tokio::sync::Notify)>);

/// The value to report, and how many times it was asked for.
type State = (Result<u64, String>, usize);

impl Controlled {
    fn new() -> Self {
        Self(Arc::new((
            Mutex::new((Ok(0), 0)),
            tokio::sync::Notify::new(),
        )))
    }

    fn set(&self, value: Result<u64, &str>) {
        self.0.0.lock().unwrap().0 = value.map_err(str::to_owned);
    }

    /// Sets `value` and waits until the scaler has counted it twice (so a stream has acted on
    /// it at least once).
    async fn set_and_wait(&self, value: Result<u64, &str>) {
        let start = {
            let mut state = self.0.0.lock().unwrap();
            state.0 = value.map_err(str::to_owned);
            state.1
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.0.1.notified();
                if self.0.0.lock().unwrap().1 >= start + 2 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the stream keeps counting");
    }
}

impl Backlog for Controlled {
    const NAME: &'static str = "controlled";
    fn from_env(_: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self::new())
    }
    async fn backlog(&self) -> Result<u64, BoxError> {
        let value = {
            let mut state = self.0.0.lock().unwrap();
            state.1 += 1;
            state.0.clone()
        };
        self.0.1.notify_waiters();
        value.map_err(Into::into)
    }
}

struct Running {
    client: ExternalScalerClient<Channel>,
    backlog: Controlled,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), BoxError>>,
}

async fn start(poll: Duration) -> Running {
    let backlog = Controlled::new();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scaler = Scaler::new(backlog.clone(), poll, shutdown.clone());
    let server = tokio::spawn(scaler.serve(listener));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Running {
        client: ExternalScalerClient::new(channel),
        backlog,
        shutdown,
        server,
    }
}

fn object(metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "pg-queue".into(),
        namespace: "default".into(),
        scaler_metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

const ADDRESS: (&str, &str) = ("scalerAddress", "scaler.default:6000");

#[tokio::test]
async fn metric_spec_metrics_and_activity() {
    let mut s = start(Duration::from_secs(1)).await;

    let spec = s.client.get_metric_spec(object(&[ADDRESS])).await.unwrap();
    let spec = &spec.get_ref().metric_specs;
    assert_eq!(spec.len(), 1);
    assert_eq!(spec[0].metric_name, "backlog");
    assert_eq!(
        (spec[0].target_size, spec[0].target_size_float),
        (100, 100.0)
    );
    let spec = s
        .client
        .get_metric_spec(object(&[ADDRESS, ("targetBacklog", "5")]))
        .await
        .unwrap();
    let spec = &spec.get_ref().metric_specs[0];
    assert_eq!((spec.target_size, spec.target_size_float), (5, 5.0));

    s.backlog.set(Ok(42));
    let metrics = s
        .client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object(&[ADDRESS])),
            metric_name: "backlog".into(),
        })
        .await
        .unwrap();
    let values = &metrics.get_ref().metric_values;
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].metric_name, "backlog");
    assert_eq!(
        (values[0].metric_value, values[0].metric_value_float),
        (42, 42.0)
    );

    let active = |r: tonic::Response<IsActiveResponse>| r.into_inner().result;
    assert!(active(
        s.client.is_active(object(&[ADDRESS])).await.unwrap()
    ));
    let at_42 = object(&[ADDRESS, ("activationBacklog", "42")]);
    assert!(!active(s.client.is_active(at_42.clone()).await.unwrap()));
    s.backlog.set(Ok(43));
    assert!(active(s.client.is_active(at_42).await.unwrap()));
    s.backlog.set(Ok(0));
    assert!(!active(s.client.is_active(object(&[])).await.unwrap()));

    let bad = s
        .client
        .get_metric_spec(object(&[("targetBacklog", "0")]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("targetBacklog"), "{}", bad.message());
    let bad = s
        .client
        .stream_is_active(object(&[("activationBacklog", "some")]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    s.backlog.set(Err("database is down"));
    for status in [
        s.client.is_active(object(&[])).await.unwrap_err(),
        s.client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(object(&[])),
                metric_name: "backlog".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("database is down"));
    }

    s.shutdown.cancel();
    s.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn stream_pushes_each_change_once_and_ends_on_shutdown() {
    let mut s = start(Duration::from_millis(20)).await;
    let mut stream = s
        .client
        .stream_is_active(object(&[ADDRESS, ("activationBacklog", "2")]))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a push within 10 s")
            .expect("stream healthy")
            .map(|r| r.result)
    };
    // The current state at once, before anything changes.
    assert_eq!(next().await, Some(false));
    s.backlog.set(Ok(3));
    assert_eq!(next().await, Some(true));
    // Still active, a count error, active again: nothing to push. Then inactive: the next
    // message must be `false`, so no `true` was repeated in between.
    s.backlog.set_and_wait(Ok(500)).await;
    s.backlog.set_and_wait(Err("blip")).await;
    s.backlog.set_and_wait(Ok(7)).await;
    s.backlog.set(Ok(2));
    assert_eq!(next().await, Some(false));
    s.backlog.set(Ok(9));
    assert_eq!(next().await, Some(true));

    s.shutdown.cancel();
    assert_eq!(next().await, None, "the stream ends on shutdown");
    tokio::time::timeout(Duration::from_secs(10), s.server)
        .await
        .expect("the server stops once its streams have ended")
        .unwrap()
        .unwrap();
}
