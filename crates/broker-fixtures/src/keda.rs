//! The number KEDA's own scaler for each broker reads, taken from the same place it takes it
//! (`cargo xtask autoscale` scales replicas on it, as KEDA and the HPA would).

use super::{Error, Fixture, Kind, Publisher};
use std::time::Duration;

/// The RabbitMQ management API (plugin `rabbitmq_management`) of the broker at 127.0.0.1:5672.
const RABBITMQ_MANAGEMENT: &str = "127.0.0.1:15672";

impl Fixture {
    /// The metric KEDA's scaler for `kind` reads for this fixture's source, as the scaler reads
    /// it:
    /// - RabbitMQ (`protocol: http`): the queue's `messages` in the management API, ready plus
    ///   unacknowledged (refreshed by the broker every few seconds, as KEDA sees it);
    /// - Kafka: the connector group's lag, Σ (high watermark − committed offset) over the source
    ///   partitions; a partition without a committed offset counts from its low watermark
    ///   (`offsetResetPolicy: earliest`);
    /// - Redis (`redis` lists scaler): the list's length;
    /// - NATS JetStream: the connector's durable consumer's pending plus ack-pending (0 while the
    ///   consumer does not exist yet, as KEDA reports it);
    /// - SQS: `ApproximateNumberOfMessages` + `ApproximateNumberOfMessagesNotVisible`
    ///   (`scaleOnInFlight`, KEDA's default);
    /// - Kinesis: the stream's open shards (KEDA's `kinesis-stream` scaler scales on shards,
    ///   not on records).
    ///
    /// Pub/Sub has none here: KEDA reads Cloud Monitoring, which the emulator does not have.
    pub async fn keda_metric(&self) -> Result<u64, Error> {
        match &self.publisher {
            Publisher::Redis(conn) => Ok(redis::cmd("LLEN")
                .arg(&self.names[0])
                .query_async(&mut conn.clone())
                .await?),
            Publisher::RabbitMq(_) => {
                let host = self.var("HOST")?;
                if !host.contains("@127.0.0.1:5672/") {
                    return Err(format!(
                        "no management API known for {}: only the broker at 127.0.0.1:5672",
                        Kind::RabbitMq.binary()
                    )
                    .into());
                }
                let queue = &self.names[0];
                let body = http_get_json(
                    RABBITMQ_MANAGEMENT,
                    &format!("/api/queues/%2F/{queue}"),
                    // guest:guest
                    "Basic Z3Vlc3Q6Z3Vlc3Q=",
                )
                .await
                .map_err(|e| {
                    format!(
                        "RabbitMQ management API at {RABBITMQ_MANAGEMENT}: {e}\n  enable it with: \
                         rabbitmq-plugins enable rabbitmq_management (cargo xtask setup does)"
                    )
                })?;
                // A queue nobody has touched yet has no `messages` until the next statistics
                // round: nothing to scale on.
                Ok(body.get("messages").and_then(|m| m.as_u64()).unwrap_or(0))
            }
            Publisher::Nats(js) => {
                let stream = self.names[0]
                    .strip_suffix(".requests")
                    .ok_or("NATS subject without .requests")?
                    .to_uppercase();
                let consumer = self.var("CONSUMER")?;
                use async_nats::jetstream::context::ConsumerInfoErrorKind;
                let stream = js.get_stream(&stream).await?;
                match stream.consumer_info(&consumer).await {
                    Ok(info) => Ok(info.num_pending + info.num_ack_pending as u64),
                    Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }
            Publisher::Sqs { client, url, .. } => {
                use aws_sdk_sqs::types::QueueAttributeName as A;
                let out = client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(A::ApproximateNumberOfMessages)
                    .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await?;
                let attrs = out.attributes.unwrap_or_default();
                let n = |a: &A| {
                    attrs
                        .get(a)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                Ok(n(&A::ApproximateNumberOfMessages)
                    + n(&A::ApproximateNumberOfMessagesNotVisible))
            }
            Publisher::Kinesis { client, .. } => {
                let shards = client
                    .list_shards()
                    .stream_name(&self.names[0])
                    .send()
                    .await?
                    .shards
                    .unwrap_or_default();
                Ok(shards
                    .iter()
                    .filter(|s| {
                        s.sequence_number_range()
                            .is_none_or(|r| r.ending_sequence_number().is_none())
                    })
                    .count() as u64)
            }
            Publisher::Kafka {
                lag, partitions, ..
            } => {
                use rdkafka::consumer::Consumer as _;
                let topic = &self.names[0];
                let timeout = Duration::from_secs(5);
                // librdkafka's calls block: keep them off the runtime's other tasks.
                tokio::task::block_in_place(|| {
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    for p in 0..*partitions {
                        tpl.add_partition(topic, p);
                    }
                    let committed = lag.committed_offsets(tpl, timeout)?;
                    let mut total = 0u64;
                    for p in 0..*partitions {
                        let (low, high) = lag.fetch_watermarks(topic, p, timeout)?;
                        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
                            Some(rdkafka::Offset::Offset(o)) => o,
                            _ => low,
                        };
                        total += u64::try_from(high - from).unwrap_or(0);
                    }
                    Ok(total)
                })
            }
            Publisher::PubSub(_) => Err("Pub/Sub: KEDA's scaler reads Cloud Monitoring's \
                 num_undelivered_messages, which the emulator does not serve"
                .into()),
        }
    }

    /// Kinesis: every record of the response stream, read again from its start (for telling a
    /// response never written from one the live reader passed over).
    pub async fn kinesis_responses_from_start(&self) -> Result<Vec<Vec<u8>>, Error> {
        use aws_sdk_kinesis::types::ShardIteratorType;
        let Publisher::Kinesis { client, .. } = &self.publisher else {
            return Err("not a Kinesis fixture".into());
        };
        let stream = &self.names[1];
        let mut all = Vec::new();
        let shards = client
            .list_shards()
            .stream_name(stream)
            .send()
            .await?
            .shards
            .unwrap_or_default();
        for shard in shards {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator;
            while let Some(it) = iterator {
                let out = client.get_records().shard_iterator(it).send().await?;
                if out.records.is_empty() {
                    break;
                }
                all.extend(out.records.into_iter().map(|r| r.data.into_inner()));
                iterator = out.next_shard_iterator;
            }
        }
        Ok(all)
    }

    /// The value of the connector variable `name` in this fixture's environment.
    fn var(&self, name: &str) -> Result<&str, Error> {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("the fixture sets no {name}").into())
    }
}

/// `GET path` on `addr` with an `Authorization` header, the body parsed as JSON.
async fn http_get_json(
    addr: &str,
    path: &str,
    authorization: &str,
) -> Result<serde_json::Value, Error> {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = hyper::Request::get(format!("http://{addr}{path}"))
        .header("authorization", authorization)
        .body(http_body_util::Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .map_err(|_| "no answer within 5 s")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(format!("{path}: HTTP {status}").into());
    }
    Ok(serde_json::from_slice(&body)?)
}
